"""What ``profile()`` reports: the summary's counts and wording, the chart's legend, the trace."""

from __future__ import annotations

import base64
import itertools
import json
import re
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sockpool import Cluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def matplotlib() -> Any:
    """matplotlib, drawing off-screen (the test is skipped without it)."""
    module = pytest.importorskip("matplotlib")
    module.use("Agg")
    return module


def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def test_a_legend_with_many_calls_fits_its_figure_and_names_the_rest(
        shared_cluster: Cluster, matplotlib: Any) -> None:
    # 13 calls on 2 workers: a 9 x 2.1 in figure, the legend ran off its bottom, and
    # calls 11-13 took the colours of calls 1-3 with no label of their own.
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(odd_fails, range(3), errors="return")
        for _ in range(12):
            shared_cluster.par_map(abs, range(3))
    ax = prof.plot()
    figure = ax.figure
    legend = ax.get_legend()
    box = legend.get_window_extent(figure.canvas.get_renderer())
    assert figure.bbox.y0 <= box.y0 and box.y1 <= figure.bbox.y1
    assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1
    calls = sorted({(task.call, task.function) for task in prof.tasks})
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ([f"call {call}: {function}" for call, function in calls[:10]]
                      + ["+3 more calls", "failed", "holding a chunk, in no task"])
    # Each named colour paints its own call's 3 bars only; the 3 unnamed calls share
    # the "+3 more calls" colour, which is none of the named ones.
    colours = [tuple(handle.get_facecolor()) for handle in legend.legend_handles[:11]]
    assert len(set(colours)) == 11
    bars: Counter[tuple[float, ...]] = Counter()
    for collection in ax.collections:
        bars[tuple(collection.get_facecolor()[0])] += len(collection.get_paths())
    assert [bars[colour] for colour in colours] == [3] * 10 + [9]
    # The notebook's PNG is that chart, at 96 dpi.
    found = re.search(r'src="data:image/png;base64,([^"]+)"', prof._repr_html_())
    assert found is not None
    width, height = struct.unpack(">II", base64.b64decode(found[1])[16:24])  # its IHDR
    inches = figure.get_size_inches()
    assert (width, height) == (pytest.approx(inches[0] * 96, abs=1),
                               pytest.approx(inches[1] * 96, abs=1))


def test_trace_events_on_one_thread_do_not_overlap(
        shared_cluster: Cluster, tmp_path: Path) -> None:
    # Tiny tasks share a span; their starts, floats of the clock, are coarser than
    # their shares: ts and dur rounded apart overlapped the next event on the thread.
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(abs, range(5000))
    prof.to_chrome_trace(str(tmp_path / "trace.json"))
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    complete = [event for event in events if event["ph"] == "X"]
    assert len(complete) == 5000
    assert all({"ts", "dur", "pid", "tid", "name"} <= set(event) for event in complete)
    assert {"ph": "M", "name": "process_name", "pid": 1, "tid": 0,
            "args": {"name": "sockpool"}} in events
    names = {event["tid"]: event["args"]["name"] for event in events
             if event["ph"] == "M" and event["name"] == "thread_name"}
    assert names == {worker: f"worker {worker} ({host})"
                     for worker, host in prof.workers.items()}
    origin = min(min(task.submitted, task.started) for task in prof.tasks)
    by_task = {(task.call, task.index): task for task in prof.tasks}
    for tid in names:
        own = sorted((event["ts"], event["dur"]) for event in complete if event["tid"] == tid)
        assert all(dur >= 0 for _, dur in own)
        assert all(ts + dur <= following
                   for (ts, dur), (following, _) in itertools.pairwise(own)), tid
    for event in complete:  # still where the task ran, to within the clock's resolution
        task = by_task[event["args"]["call"], event["args"]["index"]]
        assert event["ts"] == pytest.approx((task.started - origin) * 1e6, abs=1.0)
        assert event["dur"] == pytest.approx(task.seconds * 1e6, abs=0.01)


def test_a_task_that_raised_has_failed(shared_cluster: Cluster) -> None:
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(odd_fails, range(3), errors="return")
    summary = prof.summary()
    assert (summary.failed, summary.retried) == (1, 0)
    head = str(summary).splitlines()[0]
    assert head.endswith(", 1 failed") and "retried" not in head


def test_one_task_on_one_worker_is_said_in_the_singular(matplotlib: Any) -> None:
    with Cluster(n=1) as cl, cl.profile() as prof:
        cl.par_map(abs, [-1])
    assert str(prof.summary()).startswith("1 task on 1 worker in ")
    assert prof.plot().get_title() == "1 task on 1 worker"


def test_a_profile_in_which_nothing_ran_says_so_rather_than_efficiency_0(
        shared_cluster: Cluster) -> None:
    with shared_cluster.profile() as prof:
        pass
    head = str(prof.summary()).splitlines()[0]
    assert head.startswith("0 tasks on 2 workers in ")
    assert head.endswith(": no task ended in the block, so no efficiency or speed-up"), head


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_chunk_still_running_as_the_block_ends_is_counted_not_taken_for_nothing(
        shared_cluster: Cluster, matplotlib: Any) -> None:
    # A submit gathered after the block: "nothing ran" (the profile saw no RESULT).
    with shared_cluster.profile() as prof:
        future = shared_cluster.submit(_nap, 0.6)
        time.sleep(0.2)
        assert shared_cluster.par_map(_nap, [0.05, 0.05]) == [0.05, 0.05]
    assert future.result(timeout=10) == 0.6
    assert len(prof.tasks) == 2 and prof.summary().unfinished == 1
    assert str(prof).splitlines()[0].endswith(
        ", 1 chunk still running as it ended (not recorded)")
    # Drawn as such from the first handover (the submit), not as time held in no task,
    # and not cut off before the map's first task.
    ax = prof.plot()
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "running as the block ended (not recorded)" in labels
    dotted = [c for c in ax.collections if c.get_hatch() == ".."]
    starts = [path.get_extents().x0 for c in dotted for path in c.get_paths()]
    assert starts == [pytest.approx(0, abs=0.01)], starts
    # Grey (the map's own overhead, a few ms, more on a loaded machine) only on the
    # row that ran the map: the unfinished chunk's row is dotted, never grey.
    grey = [c for c in ax.collections
            if tuple(c.get_facecolor()[0][:3]) == matplotlib.colors.to_rgb("#dddddd")]
    assert _rows_of(grey).isdisjoint(_rows_of(dotted)), (_rows_of(grey), _rows_of(dotted))
    assert ax.get_xlim()[0] == 0
    with shared_cluster.profile() as empty:
        future = shared_cluster.submit(_nap, 0.3)
    future.result(timeout=10)
    assert str(empty).splitlines()[0].endswith(
        "no task ended in the block, so no efficiency or speed-up, 1 chunk still running "
        "as it ended (not recorded)")


def _rows_of(collections: list[Any]) -> set[int]:
    """The chart rows that ``collections``' bars lie on (a bar spans row - 0.4 to row + 0.4)."""
    return {round(path.get_extents().y0 + 0.4)
            for collection in collections for path in collection.get_paths()}


class _SlowToLoad:
    def __reduce__(self) -> tuple[Any, ...]:
        return _load_slowly, ()


def _load_slowly() -> _SlowToLoad:
    time.sleep(0.5)
    return _SlowToLoad()


def _with(x: int, _: _SlowToLoad) -> int:
    return x


def test_the_chart_starts_at_the_first_handover_and_shows_time_held_in_no_task(
        shared_cluster: Cluster, matplotlib: Any) -> None:
    # Its x axis began at the first task's start: 0.5 s of unpickling on each worker
    # was cut off, and a run that was mostly overhead looked fully busy.
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(_with, range(2), [_SlowToLoad()] * 2, chunksize=1)
    ax = prof.plot()
    assert ax.get_xlim()[0] == 0
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[-1] == "holding a chunk, in no task"
    held = [collection for collection in ax.collections
            if tuple(collection.get_facecolor()[0][:3]) == matplotlib.colors.to_rgb("#dddddd")]
    widths = [path.get_extents().width for collection in held
              for path in collection.get_paths()]
    assert len(widths) == 2 and all(width >= 0.5 for width in widths), widths


def test_a_profile_not_ended_shows_as_such_in_a_notebook(shared_cluster: Cluster) -> None:
    prof = shared_cluster.profile()
    assert prof._repr_html_() == "<p>&lt;Profile (not started)&gt;</p>"  # not a traceback
    with prof:
        assert prof._repr_html_() == "<p>&lt;Profile (recording)&gt;</p>"
