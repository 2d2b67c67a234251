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
import time
from dataclasses import dataclass, field

from ..common.protocol import TaskTimes
from .jobs import Chunk
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
    received: float | None = None  # when its RESULT came (None: not yet, or lost)
    bytes_out: int = 0
    #: When its tasks ran, on the master's clock (see TaskTimes): (start, end) per span.
    spans: array.array[float] = field(default_factory=lambda: array.array("d"))
    counts: array.array[int] = field(default_factory=lambda: array.array("I"))
    failed: frozenset[int] = frozenset()  # offsets of the tasks that failed
    cancelled: bool = False
    lost: bool = False  # with its worker: each task spans from ``sent`` to the loss


@dataclass(eq=False)
class Recording:
    """What one ``profile()`` block collected: the chunk runs and the workers seen."""

    started: float
    runs: list[ChunkRun] = field(default_factory=list)
    workers: dict[int, str] = field(default_factory=dict)  # id -> host
    clock_errors: dict[int, float] = field(default_factory=dict)  # id -> bound, seconds
    stopped: float = 0.0


class Profiler:
    """The recordings in progress (I/O thread only)."""

    def __init__(self) -> None:
        self.recordings: list[Recording] = []
        self._open: dict[int, ChunkRun] = {}  # chunk id -> its attempt that is out

    @property
    def active(self) -> bool:
        """Whether a profile records now (TASKs are then flagged PROFILE)."""
        return bool(self.recordings)

    def start(self, workers: list[WorkerRecord]) -> Recording:
        """Begin a recording; ``workers`` are those alive now."""
        recording = Recording(time.time())
        recording.workers.update((record.id, record.host) for record in workers)
        self.recordings.append(recording)
        return recording

    def stop(self, recording: Recording, workers: dict[int, WorkerRecord]) -> None:
        """End a recording: attempts whose worker is gone by now were lost with it."""
        now = time.time()
        for chunk_id, run in list(self._open.items()):
            record = workers.get(run.worker)
            if record is None or not record.alive:
                self._close_lost(chunk_id, _wall(record.exited_at) if record and
                                 record.exited_at else now)
        recording.stopped = now
        for worker_id, host in recording.workers.items():
            record = workers.get(worker_id)
            if record is not None:
                recording.clock_errors[worker_id] = record.clock.error
            recording.workers[worker_id] = record.host if record is not None else host
        self.recordings.remove(recording)
        if not self.recordings:
            self._open.clear()

    def sent(self, chunk: Chunk, record: WorkerRecord, nbytes: int, function: str) -> None:
        """``chunk`` went to ``record``'s worker (``nbytes`` on the wire)."""
        now = time.time()
        if chunk.id in self._open:  # sent again: the attempt before was lost
            self._close_lost(chunk.id, now)
        run = ChunkRun(chunk.job.id, function, chunk.first_index + chunk.resume,
                       chunk.count - chunk.resume, record.id, record.host, chunk.attempts + 1,
                       chunk.submitted or now, now, nbytes)
        self._open[chunk.id] = run
        for recording in self.recordings:
            recording.runs.append(run)
            recording.workers.setdefault(record.id, record.host)

    def returned(self, chunk: Chunk, record: WorkerRecord, times: TaskTimes | None,
                 nbytes: int, cancelled: bool) -> None:
        """The RESULT of ``chunk`` came, with its tasks' times on the worker's clock."""
        run = self._open.pop(chunk.id, None)
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

    def _close_lost(self, chunk_id: int, when: float) -> None:
        run = self._open.pop(chunk_id)
        run.lost = True
        run.spans = array.array("d", (run.sent, when))
        run.counts = array.array("I", [run.count])
        run.failed = frozenset(range(run.count))


def _wall(monotonic: float) -> float:
    """A ``time.monotonic()`` reading on the ``time.time()`` clock."""
    return time.time() - (time.monotonic() - monotonic)
