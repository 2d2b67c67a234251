"""What ``Cluster.profile()`` records on the I/O thread, and the workers' clocks.

While a profile is recording, every TASK is flagged ``PROFILE``: the worker
times each task on its own clock and sends the times ahead of its RESULT.  The
I/O thread keeps one :class:`ChunkRun` per chunk and attempt (who ran it, when
it was sent and answered, its bytes); the caller's side turns them into task
records.  Nothing here runs, and nothing is flagged, when no profile records.
Task times come back on the worker's clock, and are put on the master's by the
offset that :class:`~.clock.ClockSync` measures from the heartbeats.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

from ..common.protocol import TaskTimes
from .jobs import Chunk, Job
from .records import WorkerRecord


@dataclass(eq=False)
class ChunkRun:
    """One attempt of a chunk on one worker, as the master saw it (master's clock)."""

    job: int
    function: str
    first_index: int  # of the first task this attempt ran (a resumed chunk skips some)
    count: int
    worker: int
    host: str
    attempt: int  # 1 for the first
    submitted: float  # when the caller handed the chunk over
    sent: float
    bytes_in: int
    received: float | None = None  # when its RESULT came, or its worker was lost
    bytes_out: int = 0
    #: When its tasks ran, on the master's clock (see TaskTimes): (start, end) per span.
    spans: array.array[float] = field(default_factory=lambda: array.array("d"))
    counts: array.array[int] = field(default_factory=lambda: array.array("I"))
    failed: frozenset[int] = frozenset()  # offsets of the tasks that failed
    cancelled: bool = False
    #: Lost with its worker, how far it got unknown: each task spans the attempt.
    lost: bool = False


@dataclass(eq=False)
class Recording:
    """What one ``profile()`` block collected: the chunk runs and the workers seen."""

    started: float
    runs: list[ChunkRun] = field(default_factory=list)
    workers: dict[int, str] = field(default_factory=dict)  # id -> host
    clock_errors: dict[int, float] = field(default_factory=dict)  # id -> bound, seconds
    #: id -> when the worker could take tasks and when it ended, within the block.
    windows: dict[int, tuple[float, float]] = field(default_factory=dict)
    stopped: float = 0.0
    #: The workers seen, until the block ends (a replaced one leaves the pool's table).
    members: dict[int, WorkerRecord] = field(default_factory=dict)


class Profiler:
    """The recordings in progress (I/O thread only)."""

    def __init__(self) -> None:
        self.recordings: list[Recording] = []
        self._open: dict[int, ChunkRun] = {}  # chunk id -> its attempt that is out
        self._jobs: dict[int, Job] = {}  # chunk id -> its job, while the attempt is out
        #: worker id -> when its last answered chunk ended: one sent while it ran that
        #: waited behind it, so a lost one began no earlier.
        self._last_end: dict[int, float] = {}

    @property
    def active(self) -> bool:
        """Whether a profile records now (TASKs are then flagged PROFILE)."""
        return bool(self.recordings)

    def cancelled_out(self) -> bool:
        """Whether a chunk of a cancelled job is still out: its worker was told to stop
        it, and its RESULT (what ran of it, and the task interrupted) comes soon."""
        return any(self._jobs[chunk_id].cancelled for chunk_id in self._open)

    def start(self, workers: list[WorkerRecord]) -> Recording:
        """Begin a recording; ``workers`` are those alive now."""
        recording = Recording(time.time())
        recording.workers.update((record.id, record.host) for record in workers)
        recording.members.update((record.id, record) for record in workers)
        self.recordings.append(recording)
        return recording

    def stop(self, recording: Recording, workers: dict[int, WorkerRecord]) -> None:
        """End a recording: attempts whose worker is gone by now were lost with it;
        those still out are left unfinished in it (another recording may go on)."""
        now = time.time()
        for chunk_id, run in list(self._open.items()):
            record = workers.get(run.worker)
            if record is None or not record.alive:
                self._close_lost(chunk_id, _wall(record.exited_at) if record and
                                 record.exited_at else now)
        still_out = set(map(id, self._open.values()))
        recording.runs = [dataclasses.replace(run) if id(run) in still_out else run
                          for run in recording.runs]
        recording.stopped = now
        for worker_id, record in recording.members.items():
            recording.clock_errors[worker_id] = record.clock.error
            recording.workers[worker_id] = record.host
            joined = record.ready_at if record.ready_at is not None else time.monotonic()
            ends = [at for at in (record.left_at, record.exited_at) if at is not None]
            recording.windows[worker_id] = (max(_wall(joined), recording.started),
                                            min(_wall(min(ends)), now) if ends else now)
        recording.members.clear()
        self.recordings.remove(recording)
        if not self.recordings:
            self._open.clear()
            self._jobs.clear()
            self._last_end.clear()

    def sent(self, chunk: Chunk, record: WorkerRecord, nbytes: int, function: str) -> None:
        """``chunk`` went to ``record``'s worker (``nbytes`` on the wire)."""
        now = time.time()
        if chunk.id in self._open:  # sent again: the attempt before was lost
            self._close_lost(chunk.id, now)
        run = ChunkRun(chunk.job.id, function, chunk.first_index + chunk.resume,
                       chunk.count - chunk.resume, record.id, record.host, chunk.attempts + 1,
                       chunk.submitted or now, now, nbytes)
        self._open[chunk.id] = run
        self._jobs[chunk.id] = chunk.job
        for recording in self.recordings:
            recording.runs.append(run)
            recording.workers.setdefault(record.id, record.host)
            recording.members.setdefault(record.id, record)

    def returned(self, chunk: Chunk, record: WorkerRecord, times: TaskTimes | None,
                 nbytes: int, cancelled: bool) -> None:
        """The RESULT of ``chunk`` came, with its tasks' times on the worker's clock."""
        run = self._pop(chunk.id)
        if run is None:
            return
        run.received = time.time()
        run.bytes_out = nbytes
        run.cancelled = cancelled
        if times is not None:
            offset = record.clock.offset
            run.spans = array.array("d", [stamp - offset for stamp in times.spans])
            run.counts = times.counts
            run.failed = frozenset(times.failed)
        self._last_end[run.worker] = run.spans[-1] if run.spans else run.received

    def taken_back(self, chunk: Chunk) -> None:
        """``chunk``'s worker gave it back unstarted (work stealing): no attempt there."""
        run = self._pop(chunk.id)
        if run is not None:
            for recording in self.recordings:
                with contextlib.suppress(ValueError):  # (a recording begun since it was sent)
                    recording.runs.remove(run)

    def lost(self, chunk: Chunk, record: WorkerRecord, ran: tuple[int, int] | None = None,
             running: tuple[int, float] | None = None) -> None:
        """``chunk``'s attempt ended with ``record``'s worker.

        ``ran``: how far it got, as its worker's progress page says (offsets in
        the chunk): tasks before the first had finished, their results kept; up
        to the second they were lost (the task it died in, and any whose results
        died unsent); the rest never started.  None: all of them were lost.
        ``running``: where the stretch of tasks it died in starts, and when it
        began on the worker's clock (a profiled chunk's page says): the tasks
        before it get the time until then, not a share of the whole attempt.
        """
        if chunk.id not in self._open:
            return
        when = _wall(record.exited_at) if record.exited_at is not None else time.time()
        if ran is None:
            self._close_lost(chunk.id, when)
            return
        run = self._pop(chunk.id)
        assert run is not None
        first = run.first_index - chunk.first_index
        kept, end = ran
        if end <= first:  # it never started: there is no attempt to show
            for recording in self.recordings:
                recording.runs = [other for other in recording.runs if other is not run]
            return
        run.count = end - first
        self._end(run, when)
        if running is not None:
            self._split(run, running[0] - first, running[1] - record.clock.offset)
        run.failed = frozenset(range(max(kept - first, 0), run.count))

    def _pop(self, chunk_id: int) -> ChunkRun | None:
        """The attempt of ``chunk_id`` that was out, no longer out."""
        self._jobs.pop(chunk_id, None)
        return self._open.pop(chunk_id, None)

    def _close_lost(self, chunk_id: int, when: float) -> None:
        run = self._pop(chunk_id)
        assert run is not None
        run.lost = True
        self._end(run, when)
        run.failed = frozenset(range(run.count))

    @staticmethod
    def _split(run: ChunkRun, finished: int, at: float) -> None:
        """Give a lost attempt's first ``finished`` tasks the time until ``at``, and
        the rest (the one it died in) the time from then."""
        began, ended = run.spans[0], run.spans[1]
        if 0 < finished < run.count and began < at < ended:
            run.spans = array.array("d", (began, at, at, ended))
            run.counts = array.array("I", (finished, run.count - finished))

    def _end(self, run: ChunkRun, when: float) -> None:
        """A lost attempt's one span: from when it could start to ``when``."""
        began = max(run.sent, self._last_end.get(run.worker, run.sent))
        run.received = when
        run.spans = array.array("d", (min(began, when), max(when, run.sent)))
        run.counts = array.array("I", [run.count])


def _wall(monotonic: float) -> float:
    """A ``time.monotonic()`` reading on the ``time.time()`` clock."""
    return time.time() - (time.monotonic() - monotonic)
