"""A profile's task records, and what is made of them: summary, tables, chart, trace.

Each worker's time over the profile's wall interval (from the first chunk
handed over to the last task's end) is split three ways: *busy* running tasks,
*overhead* holding a chunk but not in a task (transfer, unpickling, waiting
for the next message), and *idle* with nothing to do.  Efficiency is busy over
workers x wall; the speed-up is the serial sum of task times over the wall.
matplotlib is needed for the chart only (``pip install 'sockpool[plot]'``).
"""

from __future__ import annotations

import base64
import html as markup
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..common.proc import format_bytes
from ..dispatch.profiling import ChunkRun

#: Slowest tasks a summary lists.
SLOWEST = 5
#: Up to this many tasks, the chart outlines each bar.
OUTLINED_BARS = 500
#: Calls the chart's legend names, each in a colour of its own; the rest share one.
LEGEND_CALLS = 10
#: The colour of the calls past those the legend names (none of tab10's ten).
UNNAMED_COLOUR = "black"
#: The colour of a worker holding a chunk outside its tasks (behind the task bars).
HELD_COLOUR = "#dddddd"
#: The legend names that colour where it shows on at least this share of the rows.
OVERHEAD_SHOWN = 0.01
#: The outline of a chunk still running as the block ended (its tasks not recorded).
UNFINISHED_EDGE = "grey"
#: The trace's ticks per microsecond.  A binary fraction of a microsecond (about
#: a nanosecond) adds up exactly in floating point: an event that ends where the
#: next begins has ``ts + dur == next ts``, not a hair past it.
TRACE_TICKS = 1024


@dataclass(frozen=True)
class TaskRecord:
    """One attempt of one task.  Times are ``time.time()`` seconds on the master's clock.

    A task lost with its worker has ``ok`` False.  Where the worker's progress
    page tells how far its chunk got, the tasks that ran (those that finished,
    then the one it died in) share the time from when the chunk was sent to the
    worker's end, and those that never started have no record there; where it
    cannot tell, each task spans that whole time.  Tasks are timed in spans of about a
    millisecond at least: a longer task is timed on its own, and consecutive
    short ones share their span's time equally (timing each of 100 000 trivial
    tasks would cost more than running them).  A chunk's bytes are shared
    evenly among its tasks.
    """

    index: int  # the task's index in its call (a submit: 0)
    call: int  # the call it belongs to (one map, one submit), numbered by the cluster
    worker: int
    host: str
    submitted: float  # when the call handed the task's chunk over
    started: float
    finished: float
    attempt: int  # 1, or more for a task retried after its worker was lost
    bytes_in: int
    bytes_out: int
    ok: bool
    function: str  # the task function's qualified name
    #: Its share of its span, where ``finished - started`` cannot show it (a share
    #: below the clock's float resolution, a fraction of a microsecond).
    share: float | None = field(default=None, repr=False, compare=False)

    @property
    def seconds(self) -> float:
        """How long the task ran."""
        return self.share if self.share is not None else self.finished - self.started


class Profile(Protocol):
    """What the functions here read of a finished :class:`~.profile.Profile`."""

    @property
    def tasks(self) -> list[TaskRecord]: ...
    @property
    def attempts(self) -> list[ChunkRun]: ...
    @property
    def workers(self) -> dict[int, str]: ...
    @property
    def windows(self) -> dict[int, tuple[float, float]]: ...
    @property
    def started(self) -> float: ...
    @property
    def stopped(self) -> float: ...


@dataclass(frozen=True)
class WorkerTime:
    """One worker's share of a profile's wall time, in seconds."""

    worker: int
    host: str
    tasks: int
    busy: float
    overhead: float
    idle: float


@dataclass(frozen=True)
class Summary:
    """A profile in figures.

    Attributes:
        wall: seconds from the first chunk handed over to the last task's end.
        workers: each worker's tasks, busy, overhead and idle time, by id.
        serial: the sum of every task's time (what one worker would have taken).
        efficiency: busy time over the time workers were there to take tasks
            (1.0: no worker ever waited; a replacement counts from when it was ready).
        speedup: ``serial / wall``.
        slowest: the longest tasks, longest first.
        tasks: task records, one per task and attempt.
        failed: tasks whose last attempt failed (raised, or was lost with its
            worker and not retried).
        retried: attempts lost with their worker whose task was tried again.
        unfinished: chunks sent during the block whose answer came after it
            ended (their tasks are not in the profile).
    """

    wall: float
    workers: tuple[WorkerTime, ...]
    serial: float
    efficiency: float
    speedup: float
    slowest: tuple[TaskRecord, ...]
    tasks: int
    failed: int
    retried: int = 0
    unfinished: int = 0

    def __str__(self) -> str:
        head = (f"{count(self.tasks, 'task')} on {count(len(self.workers), 'worker')} in "
                f"{self.wall:.3f} s: " + (
                    f"efficiency {self.efficiency:.0%}, speed-up {self.speedup:.2f}x "
                    f"(serial {self.serial:.3f} s)" if self.tasks else
                    "no task ended in the block, so no efficiency or speed-up"))
        if self.unfinished:
            head += (f", {count(self.unfinished, 'chunk')} still running as it ended "
                     "(not recorded)")
        if self.failed:
            head += f", {self.failed} failed"
        if self.retried:
            head += f", {count(self.retried, 'attempt')} lost and retried"
        lines = [head,
                 f"{'worker':>6}  {'host':<16} {'tasks':>6} {'busy s':>9} {'overhead s':>10} "
                 f"{'idle s':>9}"]
        lines += [f"{w.worker:>6}  {w.host[:16]:<16} {w.tasks:>6} {w.busy:>9.3f} "
                  f"{w.overhead:>10.3f} {w.idle:>9.3f}" for w in self.workers]
        if self.slowest:
            lines.append("slowest: " + ", ".join(
                f"task {t.index} of {t.function} (call {t.call}) {t.seconds:.3f} s "
                f"on worker {t.worker}" for t in self.slowest))
        return "\n".join(lines)


def count(number: int, noun: str) -> str:
    """``1 task``, ``2 tasks``: a count and its noun."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def summarize(profile: Profile) -> Summary:
    """The figures of a finished profile."""
    tasks = profile.tasks
    runs = profile.attempts
    start = min((run.submitted for run in runs), default=profile.started)
    end = max([task.finished for task in tasks]
              + [run.received for run in runs if run.received is not None], default=start)
    wall = max(end - start, 0.0)
    rows, available = [], 0.0
    windows = profile.windows
    for worker, host in sorted(profile.workers.items()):
        own = [task for task in tasks if task.worker == worker]
        busy = _covered((task.started, task.finished) for task in own)
        held = _covered((run.sent, run.received if run.received is not None else end)
                        for run in runs if run.worker == worker)
        held = max(held, busy)
        # A worker that joined late (a replacement) or ended early was not there to wait.
        joined, left = windows.get(worker, (start, end))
        there = max(held, min(left, end) - max(joined, start))
        available += there
        rows.append(WorkerTime(worker, host, len(own), busy, held - busy, there - held))
    serial = sum(task.seconds for task in tasks)
    busy_total = sum(row.busy for row in rows)
    slowest = tuple(sorted(tasks, key=lambda task: task.seconds, reverse=True)[:SLOWEST])
    return Summary(wall, tuple(rows), serial,
                   busy_total / available if available > 0 else 0.0,
                   serial / wall if wall > 0 else 0.0, slowest, len(tasks),
                   *_outcomes(tasks), sum(run.received is None for run in runs))


def _outcomes(tasks: list[TaskRecord]) -> tuple[int, int]:
    """(failed, retried): the tasks whose last attempt failed, and the failed
    attempts that a later attempt of their task followed."""
    last: dict[tuple[int, int], TaskRecord] = {}
    for task in tasks:
        key = (task.call, task.index)
        if key not in last or task.attempt > last[key].attempt:
            last[key] = task
    failed = sum(not task.ok for task in last.values())
    retried = sum(not task.ok and task.attempt < last[task.call, task.index].attempt
                  for task in tasks)
    return failed, retried


def _covered(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of intervals (overlapping ones counted once)."""
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(begin, reach)
        reach = end
    return total


# -- the chart --------------------------------------------------------------------------


def plot(profile: Profile, ax: Any = None) -> Any:
    """A Gantt chart of the profile on ``ax`` (a new figure if None); returns the Axes."""
    try:
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise ImportError("Profile.plot() needs matplotlib: pip install 'sockpool[plot]'") from None
    if ax is None:
        _, ax = plt.subplots(figsize=_figure_size(profile))
    tasks = profile.tasks
    origin = _origin(profile)
    rows = {worker: row for row, worker in enumerate(sorted(profile.workers))}
    calls = _calls(tasks)
    colours = plt.get_cmap("tab10")
    # Past the named calls, one colour: a reused one would pass for a named call.
    colour_of = {call: colours(number % 10) if number < LEGEND_CALLS else UNNAMED_COLOUR
                 for number, (call, _) in enumerate(calls)}
    # Outlined bars tell neighbours apart; thousands of outlines would paint a row black.
    outline = "black" if len(tasks) <= OUTLINED_BARS else "none"
    held, running = _held(profile, origin, rows, finished=True), _held(profile, origin, rows)
    for worker, bars in held.items():  # behind the tasks: what shows is overhead
        ax.broken_barh(bars, (rows[worker] - 0.4, 0.8), facecolors=HELD_COLOUR)
    for worker, bars in running.items():  # what ran there is not known yet
        ax.broken_barh(bars, (rows[worker] - 0.4, 0.8), facecolors="white",
                       edgecolors=UNFINISHED_EDGE, hatch="..")
    for (worker, call, ok), bars in _group(tasks, origin).items():
        ax.broken_barh(bars, (rows[worker] - 0.4, 0.8), facecolors=colour_of[call],
                       edgecolors=outline if ok else "red", linewidth=0.3 if ok else 1.0,
                       hatch=None if ok else "//")
    ax.set_yticks(list(rows.values()),
                  [f"worker {worker} ({profile.workers[worker]})" for worker in rows])
    ax.invert_yaxis()
    ax.set_xlim(left=0)  # from the first handover: time before the first task shows
    ax.set_xlabel("seconds since the first task was handed over")
    handles = [Patch(facecolor=colour_of[call], label=f"call {call}: {function}")
               for call, function in calls[:LEGEND_CALLS]]
    if len(calls) > LEGEND_CALLS:
        handles.append(Patch(facecolor=UNNAMED_COLOUR,
                             label=f"+{count(len(calls) - LEGEND_CALLS, 'more call')}"))
    if any(not task.ok for task in tasks):
        handles.append(Patch(facecolor="white", edgecolor="red", hatch="//", label="failed"))
    if _grey_share(held, tasks, origin) >= OVERHEAD_SHOWN:
        handles.append(Patch(facecolor=HELD_COLOUR, label="holding a chunk, in no task"))
    if running:
        handles.append(Patch(facecolor="white", edgecolor=UNFINISHED_EDGE, hatch="..",
                             label="running as the block ended (not recorded)"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_title(f"{count(len(tasks), 'task')} on {count(len(rows), 'worker')}")
    ax.figure.tight_layout()
    return ax


def _grey_share(held: dict[int, list[tuple[float, float]]], tasks: list[TaskRecord],
                origin: float) -> float:
    """How much of the rows the grey bars show past the task bars drawn over them."""
    grey, span = 0.0, 0.0
    for worker, bars in held.items():
        covered = _covered((start, start + width) for start, width in bars)
        busy = _covered((task.started - origin, task.finished - origin)
                        for task in tasks if task.worker == worker)
        grey += max(covered - busy, 0.0)
        span = max(span, max(start + width for start, width in bars))
    return grey / (span * len(held)) if held and span > 0 else 0.0


def _held(profile: Profile, origin: float, rows: dict[int, int], *, finished: bool = False
          ) -> dict[int, list[tuple[float, float]]]:
    """Bars (start, width) by worker: from each chunk sent to its answer (``finished``:
    unpickling, results, a slow function's first load show where no task is), or to
    the block's end for those not answered by then."""
    bars: dict[int, list[tuple[float, float]]] = {}
    for run in profile.attempts:
        if run.worker in rows and (run.received is not None) == finished:
            end = run.received if run.received is not None else profile.stopped
            bars.setdefault(run.worker, []).append((run.sent - origin, max(end - run.sent, 0)))
    return bars


def _calls(tasks: list[TaskRecord]) -> list[tuple[int, str]]:
    """The calls of the tasks, (number, function), in order."""
    return sorted({(task.call, task.function) for task in tasks})


def _figure_size(profile: Profile) -> tuple[float, float]:
    """Inches for the chart: a row per worker, and room for the legend beside it."""
    calls = len(_calls(profile.tasks))
    entries = (min(calls, LEGEND_CALLS) + (calls > LEGEND_CALLS)
               + any(not task.ok for task in profile.tasks) + bool(profile.attempts)
               + any(run.received is None for run in profile.attempts))
    rows = 1.2 + 0.45 * max(1, len(profile.workers))
    # The legend hangs from the top of the axes: a line of small text per entry,
    # below the title.
    legend = 0.7 + 0.18 * entries
    return 9.0, max(rows, legend)


def _origin(profile: Profile) -> float:
    """Time zero of the chart and the trace: the first chunk handed over, or the first
    task's start if the clock alignment puts it earlier (within its error)."""
    return min([min(task.submitted, task.started) for task in profile.tasks]
               + [run.submitted for run in profile.attempts], default=profile.started)


def _group(tasks: list[TaskRecord], origin: float
           ) -> dict[tuple[int, int, bool], list[tuple[float, float]]]:
    """Bars (start, width) by worker, call and outcome: one draw call per group, not per task."""
    groups: dict[tuple[int, int, bool], list[tuple[float, float]]] = {}
    for task in tasks:
        groups.setdefault((task.worker, task.call, task.ok), []).append(
            (task.started - origin, max(task.seconds, 0.0)))
    return groups


def png(profile: Profile) -> bytes | None:
    """The chart as PNG bytes, or None without matplotlib (drawn off-screen, then closed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=_figure_size(profile))
    plot(profile, figure.add_subplot())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96)
    return buffer.getvalue()


# -- Chrome trace and HTML ----------------------------------------------------------------


def chrome_trace(profile: Profile) -> dict[str, Any]:
    """The tasks as Chrome trace events: a thread per worker, a complete event per task."""
    tasks = profile.tasks
    origin = _origin(profile)
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "sockpool"}}]
    events += [{"ph": "M", "name": "thread_name", "pid": 1, "tid": worker,
                "args": {"name": f"worker {worker} ({host})"}}
               for worker, host in sorted(profile.workers.items())]
    events += [{"ph": "X", "name": task.function, "cat": f"call {task.call}", "pid": 1,
                "tid": task.worker, "ts": start / TRACE_TICKS,
                "dur": (end - start) / TRACE_TICKS,
                "args": {"index": task.index, "call": task.call, "attempt": task.attempt,
                         "ok": task.ok, "bytes_in": task.bytes_in,
                         "bytes_out": task.bytes_out}}
               for task, (start, end) in zip(tasks, _track(tasks, origin), strict=True)]
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _track(tasks: list[TaskRecord], origin: float) -> list[tuple[int, int]]:
    """Each task's event, (start, end) in ticks since ``origin``, laid so that on a
    worker's track an event begins no earlier than the one before it ended.

    The clock's float resolution (about 0.24 us) is coarser than a trivial task's
    share of its span, so recorded starts bunch up and overlap the previous task's
    end; viewers want a thread's events to nest or follow one another.  The tasks
    of an attempt lost with its worker each span the attempt: they stay nested.
    """
    events: list[tuple[int, int]] = [(0, 0)] * len(tasks)
    previous: dict[int, tuple[TaskRecord, tuple[int, int]]] = {}  # by worker
    # A stable sort: the tasks of a span stay in the order they ran.
    for number in sorted(range(len(tasks)), key=lambda number: tasks[number].started):
        task = tasks[number]
        start = round((task.started - origin) * 1e6 * TRACE_TICKS)
        length = round(max(task.seconds, 0.0) * 1e6 * TRACE_TICKS)
        before = previous.get(task.worker)
        if before is None:
            event = (start, start + length)
        elif task.share is None and (task.started, task.finished) == (
                before[0].started, before[0].finished):
            event = before[1]  # one of a lost attempt's tasks: the same span, nested
        else:
            start = max(start, before[1][1])  # not before the one before it ended
            event = (start, start + length)
        events[number] = event
        previous[task.worker] = (task, event)
    return events


def write_chrome_trace(profile: Profile, path: str) -> None:
    """Write :func:`chrome_trace` as JSON to ``path``."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(chrome_trace(profile), file)


def html(profile: Profile) -> str:
    """The profile for a notebook: its figures, a table per worker, the chart inline."""
    summary = summarize(profile)
    head = markup.escape(str(summary).splitlines()[0])
    rows = "".join(
        f"<tr><td>{w.worker}</td><td>{markup.escape(w.host)}</td><td>{w.tasks}</td>"
        f"<td>{w.busy:.3f}</td><td>{w.overhead:.3f}</td><td>{w.idle:.3f}</td></tr>"
        for w in summary.workers)
    moved = sum(task.bytes_in + task.bytes_out for task in profile.tasks)
    chart = png(profile)
    picture = (f'<img alt="timeline" src="data:image/png;base64,'
               f'{base64.b64encode(chart).decode()}"/>' if chart is not None else
               "<p><i>pip install 'sockpool[plot]' for the timeline</i></p>")
    return (f"<div class='sockpool-profile'><p><b>sockpool profile</b>: {head}; "
            f"{format_bytes(moved)} moved</p>"
            "<table><tr><th>worker</th><th>host</th><th>tasks</th><th>busy s</th>"
            f"<th>overhead s</th><th>idle s</th></tr>{rows}</table>{picture}</div>")
