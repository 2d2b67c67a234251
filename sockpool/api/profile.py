"""``Cluster.profile()``: every task's worker and times, for a block of calls.

::

    with cl.profile() as prof:
        cl.par_map(fit_one, levels)
    print(prof.summary())
    prof.plot()                         # a Gantt chart: a row per worker, a bar per task
    prof.to_chrome_trace("trace.json")  # for Perfetto or chrome://tracing

While the block runs, workers time each task on their own clock; the master
puts those times on its own clock by the offset it measures from the
heartbeats (see ``dispatch/clock.py``: within half the best of the last few
round trips, tens of microseconds on one machine).  Profiling off costs
nothing: tasks are timed only while a profile records.
"""

from __future__ import annotations

import html as markup
import time
from collections.abc import Callable
from typing import Any

from ..dispatch.dispatcher import Dispatcher
from ..dispatch.profiling import ChunkRun, Recording
from ..errors import ClusterClosedError
from . import profile_report as report
from .mapping import SETTLE_SECONDS
from .profile_report import TaskRecord

__all__ = ["Profile", "TaskRecord"]



class Profile:
    """What ran where and when during a ``with cl.profile():`` block.

    Attributes:
        tasks: a :class:`TaskRecord` per task and attempt, by start time.
        workers: the workers seen during the block: id -> host.
        started, stopped: when the block began and ended (master's clock).
        clock_error: the largest bound on a worker's clock offset, in seconds.
    """

    def __init__(self, start: Callable[[], Recording], stop: Callable[[Recording], None]
                 ) -> None:
        """``start`` begins a recording where the tasks run (a cluster's I/O thread, the
        sequential plan's runner), ``stop`` ends it."""
        self._start = start
        self._stop = stop
        self._recording: Recording | None = None
        self._tasks: list[TaskRecord] | None = None

    @classmethod
    def of_cluster(cls, dispatcher: Dispatcher) -> Profile:
        """A profile of the cluster whose I/O thread ``dispatcher`` runs.

        A block left by a map's error (or Ctrl-C) ends once the chunks of the
        cancelled call have come back, at most
        :data:`~sockpool.api.mapping.SETTLE_SECONDS` later: the tasks they ran, and
        the one interrupted, are part of what happened.
        """
        def stop(recording: Recording) -> None:
            try:
                settle_until = time.monotonic() + SETTLE_SECONDS
                while (time.monotonic() < settle_until
                       and dispatcher.mailbox.ask(dispatcher.profiler.cancelled_out)):
                    time.sleep(0.002)
                dispatcher.stop_profile(recording)
            except ClusterClosedError:  # closed in the block: its I/O thread is gone
                dispatcher.profiler.stop(recording, dispatcher.pool.workers)

        return cls(dispatcher.start_profile, stop)

    def __enter__(self) -> Profile:
        if self._recording is not None:
            raise RuntimeError("a profile records once; call profile() again for another")
        self._recording = self._start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        assert self._recording is not None
        self._stop(self._recording)

    def _finished(self) -> Recording:
        if self._recording is None or not self._recording.stopped:
            raise RuntimeError("the profile is read once its `with` block has ended")
        return self._recording

    @property
    def tasks(self) -> list[TaskRecord]:
        """Every task and attempt, by start time."""
        if self._tasks is None:
            records = [task for run in self._finished().runs for task in _records(run)]
            self._tasks = sorted(records, key=lambda task: (task.started, task.worker))
        return self._tasks

    @property
    def attempts(self) -> list[ChunkRun]:
        """Every chunk sent during the block, per attempt: its worker, when it was sent
        and answered, its bytes (the raw material of :attr:`tasks`)."""
        return list(self._finished().runs)

    @property
    def workers(self) -> dict[int, str]:
        """The workers seen during the block: id -> host."""
        return dict(self._finished().workers)

    @property
    def windows(self) -> dict[int, tuple[float, float]]:
        """When each worker could take tasks during the block (it joined, it ended):
        id -> (from, to), on the master's clock."""
        return dict(self._finished().windows)

    @property
    def started(self) -> float:
        """When the block began (``time.time()`` on the master)."""
        return self._finished().started

    @property
    def stopped(self) -> float:
        """When the block ended (``time.time()`` on the master)."""
        return self._finished().stopped

    @property
    def clock_error(self) -> float:
        """The largest bound, in seconds, on how far a worker's times may be off."""
        errors = [error for worker, error in self._finished().clock_errors.items()
                  if any(task.worker == worker for task in self.tasks)]
        return max(errors, default=0.0)

    def summary(self) -> report.Summary:
        """Per worker: tasks, busy, idle and overhead time; efficiency, speed-up, slowest tasks."""
        return report.summarize(self)

    def plot(self, ax: Any = None) -> Any:
        """A Gantt chart (matplotlib): a row per worker, a bar per task coloured by call,
        failed tasks hatched.  Draws on ``ax`` if given; returns the Axes."""
        return report.plot(self, ax)

    def to_chrome_trace(self, path: str) -> None:
        """Write the tasks as Chrome trace JSON, for Perfetto (ui.perfetto.dev) or chrome://tracing."""
        report.write_chrome_trace(self, path)

    def __str__(self) -> str:
        return str(self.summary())

    def __repr__(self) -> str:
        if self._recording is None:
            return "<Profile (not started)>"
        if not self._recording.stopped:
            return "<Profile (recording)>"
        return (f"<Profile: {report.count(len(self.tasks), 'task')} on "
                f"{report.count(len(self.workers), 'worker')}>")

    def _repr_html_(self) -> str:
        if self._recording is None or not self._recording.stopped:
            return f"<p>{markup.escape(repr(self))}</p>"  # not a traceback in the cell
        return report.html(self)


def _records(run: ChunkRun) -> list[TaskRecord]:
    """The task records of one chunk attempt (none for one still running).

    The tasks of a span share its time equally (they are the short ones); a
    lost attempt's tasks each span the whole attempt.  In a chunk cancelled
    while it ran, the tasks that finished are ok and the one interrupted failed.
    """
    if not run.counts:
        return []
    bytes_in, bytes_out = run.bytes_in // run.count, run.bytes_out // run.count
    records, offset = [], 0
    for span, count in enumerate(run.counts):
        if not count:
            continue
        start, end = run.spans[2 * span], run.spans[2 * span + 1]
        step = 0.0 if run.lost else (end - start) / count
        for position in range(count):
            began = start + step * position
            records.append(TaskRecord(
                run.first_index + offset, run.job, run.worker, run.host, run.submitted, began,
                end if run.lost else began + step, run.attempt, bytes_in, bytes_out,
                offset not in run.failed, run.function,
                share=None if run.lost or count == 1 else step))
            offset += 1
    return records
