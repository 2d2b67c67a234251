"""``Cluster.profile()``: every task's worker and times, its summary, chart, trace and HTML."""

from __future__ import annotations

import _thread
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from testbed import Testbed

import sockpool
from sockpool import Cluster, Profile, TaskRecord

pytestmark = pytest.mark.timeout(120)

#: Slack for comparing the master's own clock readings with task times put on it
#: (the worker reads its clock a few microseconds from where the master would).
EPSILON = 0.002


def sleepy(x: int) -> int:
    time.sleep(0.02 if x % 4 == 0 else 0.002)
    if x == 5:
        raise ValueError("five")
    return x * x


def test_a_map_gives_one_record_per_task_within_the_block(shared_cluster: Cluster) -> None:
    before = time.time()
    with shared_cluster.profile() as prof:
        results = shared_cluster.par_map(sleepy, range(24), errors="return", chunksize=3)
    after = time.time()
    tasks = prof.tasks
    assert sorted(task.index for task in tasks) == list(range(24))
    assert {task.call for task in tasks} == {tasks[0].call}  # one call
    assert {task.function for task in tasks} == {"sleepy"}
    assert [task.index for task in tasks if not task.ok] == [5]
    assert isinstance(results[5], ValueError)
    live = {worker.id: worker.host for worker in shared_cluster.workers}
    assert {task.worker for task in tasks} <= set(live)
    assert all(task.host == live[task.worker] for task in tasks)
    assert all(task.attempt == 1 and task.bytes_in > 0 and task.bytes_out > 0 for task in tasks)
    slack = prof.clock_error + EPSILON
    for task in tasks:  # on the master's clock, inside the block, in causal order
        assert before <= task.submitted <= task.started + slack
        assert task.started <= task.finished <= after + slack
        assert task.seconds >= (0.019 if task.index % 4 == 0 else 0.0019)
    # A worker runs one task at a time: its tasks do not overlap.
    for worker in {task.worker for task in tasks}:
        own = sorted((t.started, t.finished) for t in tasks if t.worker == worker)
        assert all(end <= following + EPSILON
                   for (_, end), (following, _) in itertools.pairwise(own))
    assert prof.tasks == sorted(tasks, key=lambda t: (t.started, t.worker))


def test_tiny_tasks_sharing_a_span_each_get_their_share(shared_cluster: Cluster) -> None:
    # Their share, a fraction of a microsecond, was below a time.time() float's
    # resolution: half the records had seconds == 0 and a zero-length trace event.
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(abs, range(5000))
    shares = [task.seconds for task in prof.tasks]
    assert len(shares) == 5000 and all(share > 0 for share in shares)
    assert sum(shares) <= 2 * (prof.stopped - prof.started)  # two workers at most


def test_a_straggler_among_short_tasks_is_timed_on_its_own(shared_cluster: Cluster) -> None:
    # Tasks of 0.2 ms doubled their slices as trivial ones do, so the 0.3 s task
    # shared a slice of 8: each of them was recorded at 0.04 s, the straggler too.
    lengths = [0.0002] * 9 + [0.3] + [0.0002] * 10
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(time.sleep, lengths, chunksize=len(lengths))
    seconds = {task.index: task.seconds for task in prof.tasks}
    assert seconds[9] >= 0.3
    assert max(seconds[i] for i in seconds if i != 9) < 0.05
    assert prof.summary().slowest[0].index == 9


def test_bytes_in_counts_arguments_that_travel_by_shared_memory(
        shared_cluster: Cluster) -> None:
    # A local worker gets a large array through shared memory: the message carries
    # only the segment's descriptor, and bytes_in counted that (176 bytes).
    import numpy
    arrays = [numpy.ones(1_000_000) for _ in range(2)]  # 8 MB each
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(len, arrays, chunksize=1)
    assert all(8_000_000 <= task.bytes_in < 8_100_000 for task in prof.tasks)


def test_only_calls_inside_the_block_are_recorded(shared_cluster: Cluster) -> None:
    shared_cluster.par_map(abs, range(10))
    with shared_cluster.profile() as prof:
        first = shared_cluster.submit(sleepy, 1)
        assert first.result() == 1
        shared_cluster.par_map(abs, range(-3, 0))
    shared_cluster.par_map(abs, range(10))
    calls = sorted({(task.call, task.function) for task in prof.tasks})
    assert [function for _, function in calls] == ["sleepy", "abs"]
    assert len(prof.tasks) == 4
    assert repr(prof) == f"<Profile: 4 tasks on {len(prof.workers)} workers>"


def logged_then_fails_at_13(x: int, log: str) -> int:
    """Sleep 20 ms, writing "start"/"end" lines to ``log``; task 13 raises instead."""
    with open(log, "a") as out:
        out.write(f"start {x}\n")
    time.sleep(0.02)
    if x == 13:
        raise ValueError("bad 13")
    with open(log, "a") as out:
        out.write(f"end {x}\n")
    return x


@pytest.mark.parametrize("leave", ["caught in the block", "raised out of the block"])
def test_a_failed_map_is_recorded_as_it_ran(shared_cluster: Cluster, tmp_path: Path,
                                            leave: str) -> None:
    # A failure cancels the rest of the map: chunks on the other worker are
    # interrupted midway.  Reading such a profile raised ZeroDivisionError (a span of
    # no finished task), the finished tasks of a cancelled chunk were marked failed,
    # and with the error raised out of the block the chunks still out were missing.
    log = tmp_path / "log"
    for _ in range(3):
        log.write_text("")
        with contextlib.suppress(ValueError), shared_cluster.profile() as prof:
            try:
                shared_cluster.par_map(logged_then_fails_at_13, range(40),
                                       itertools.repeat(str(log)), chunksize=4)
            except ValueError:
                if leave == "raised out of the block":
                    raise
        events = [line.split() for line in log.read_text().splitlines()]
        started = {int(x) for kind, x in events if kind == "start"}
        ended = {int(x) for kind, x in events if kind == "end"}
        summary = prof.summary()  # (raised ZeroDivisionError)
        records = {task.index: task for task in prof.tasks}
        # Every task that finished is recorded as ok, every one that was
        # interrupted (or failed) as failed, and nothing else ran.  (A task
        # interrupted before its first line wrote nothing, and is failed too.)
        failed = {i for i, task in records.items() if not task.ok}
        assert {i for i, task in records.items() if task.ok} == ended
        assert started - ended <= failed and 13 in failed
        assert len(failed - started) <= 2  # one a worker, at most
        assert summary.failed == len(failed)
        assert all(task.finished >= task.started for task in records.values())
        str(prof), prof._repr_html_(), prof.to_chrome_trace(str(tmp_path / "trace.json"))


def raises_at_1_sleeps_at_3(x: int) -> int:
    if x == 1:
        raise ValueError("one")
    if x == 3:
        time.sleep(30)
    return x


def test_a_task_that_raised_before_its_chunk_was_cancelled_stays_failed(
        shared_cluster: Cluster) -> None:
    # With errors="return" a chunk goes on past a task that raised; cancelled
    # later (Ctrl-C), its RESULT carries no errors, and the task showed as ok.
    with shared_cluster.profile() as prof:
        results = shared_cluster.imap(raises_at_1_sleeps_at_3, range(4), chunksize=4,
                                      errors="return")
        timer = threading.Timer(1.0, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            list(results)
        timer.join()
    assert {task.index: task.ok for task in prof.tasks} == {0: True, 1: False, 2: True,
                                                            3: False}
    assert prof.summary().failed == 2


def test_the_summary_adds_up(shared_cluster: Cluster) -> None:
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(sleepy, range(16), errors="return", chunksize=2)
    summary = prof.summary()
    assert summary.tasks == 16 and summary.failed == 1
    assert sum(row.tasks for row in summary.workers) == 16
    assert [row.worker for row in summary.workers] == sorted(prof.workers)
    for row in summary.workers:  # each worker's wall time is busy, overhead or idle
        assert row.busy + row.overhead + row.idle == pytest.approx(summary.wall, abs=1e-6)
        own = [task for task in prof.tasks if task.worker == row.worker]
        assert row.busy == pytest.approx(sum(task.seconds for task in own), abs=1e-6)
    assert summary.serial == pytest.approx(sum(task.seconds for task in prof.tasks))
    busy = sum(row.busy for row in summary.workers)
    assert summary.efficiency == pytest.approx(busy / (len(summary.workers) * summary.wall))
    assert summary.speedup == pytest.approx(summary.serial / summary.wall)
    assert 0 < summary.efficiency <= 1
    longest = sorted((task.seconds for task in prof.tasks), reverse=True)
    assert [task.seconds for task in summary.slowest] == longest[:5]
    text = str(prof)
    assert text.startswith(f"16 tasks on {len(summary.workers)} workers in ")
    assert "efficiency" in text and "1 failed" in text and "slowest: task" in text


def test_the_plot_draws_a_bar_per_task_and_marks_failures(shared_cluster: Cluster) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(sleepy, range(12), errors="return")
        shared_cluster.par_map(abs, range(5))
    ax = prof.plot()
    held = matplotlib.colors.to_rgba("#dddddd")
    tasks = [c for c in ax.collections if tuple(c.get_facecolor()[0]) != held]
    assert sum(len(collection.get_paths()) for collection in tasks) == 17
    chunks = sum(len(c.get_paths()) for c in ax.collections) - 17  # time held, behind
    assert chunks == len(prof.attempts)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    calls = sorted({task.call for task in prof.tasks})
    assert labels == [f"call {calls[0]}: sleepy", f"call {calls[1]}: abs", "failed",
                      "holding a chunk, in no task"]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [
        f"worker {worker} ({host})" for worker, host in sorted(prof.workers.items())]
    hatched = [c for c in ax.collections if c.get_hatch()]
    assert sum(len(c.get_paths()) for c in hatched) == 1  # task 5
    assert ax.figure.get_size_inches()[0] > 0


def test_the_chrome_trace_is_valid_json_with_an_event_per_task(
        shared_cluster: Cluster, tmp_path: Path) -> None:
    with shared_cluster.profile() as prof:
        shared_cluster.par_map(sleepy, range(8), errors="return")
    path = tmp_path / "trace.json"
    prof.to_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    complete = [event for event in events if event["ph"] == "X"]
    assert len(complete) == 8
    assert sorted(event["args"]["index"] for event in complete) == list(range(8))
    origin = min(min(task.submitted, task.started) for task in prof.tasks)
    by_index = {task.index: task for task in prof.tasks}
    for event in complete:  # microseconds from the first task handed over (or started)
        task = by_index[event["args"]["index"]]
        assert event["ts"] == pytest.approx((task.started - origin) * 1e6, abs=0.01)
        assert event["dur"] == pytest.approx(task.seconds * 1e6, abs=0.01)
        assert event["ts"] >= 0 and event["dur"] > 0 and event["name"] == "sleepy"
    names = {event["tid"]: event["args"]["name"] for event in events
             if event["name"] == "thread_name"}
    assert set(names) == set(prof.workers)
    assert {event["tid"] for event in complete} <= set(names)
    assert [event["args"]["ok"] for event in complete if event["args"]["index"] == 5] == [False]


def test_a_task_lost_with_its_worker_and_retried_has_two_attempts(
        cluster: Cluster, tmp_path: Path) -> None:
    marker = str(tmp_path / "died-once")

    def dies_once(x: int) -> int:
        if x == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        return x

    with cluster.profile() as prof:
        assert cluster.par_map(dies_once, range(4), chunksize=1, retries=1) == [0, 1, 2, 3]
    attempts = sorted((task.attempt, task.ok) for task in prof.tasks if task.index == 2)
    assert attempts == [(1, False), (2, True)]
    lost = next(task for task in prof.tasks if task.index == 2 and not task.ok)
    again = next(task for task in prof.tasks if task.index == 2 and task.ok)
    assert lost.worker != again.worker and lost.finished <= again.started + EPSILON
    summary = prof.summary()  # it succeeded: "1 failed" counted the lost attempt
    assert (summary.failed, summary.retried) == (0, 1)
    head = str(summary).splitlines()[0]
    assert "failed" not in head and head.endswith(", 1 attempt lost and retried")


def test_a_chunk_lost_midway_keeps_its_finished_tasks_and_fails_only_the_one_it_died_in(
        cluster: Cluster, tmp_path: Path) -> None:
    # Every task of the chunk was marked failed and given the whole attempt's time
    # (speed-up 4.7x on two workers), though tasks 0-2 had finished and were delivered.
    marker = str(tmp_path / "died-once")

    def dies_at_3(x: int) -> int:
        if x == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        time.sleep(0.02)
        return x

    with cluster.profile() as prof:
        assert cluster.par_map(dies_at_3, range(10), chunksize=5, retries=1) == list(range(10))
    first_attempts = sorted((task.index, task.ok) for task in prof.tasks
                            if task.index < 5 and task.attempt == 1)
    assert first_attempts == [(0, True), (1, True), (2, True), (3, False)]
    assert sorted(task.index for task in prof.tasks if task.attempt == 2) == [3, 4]
    summary = prof.summary()
    assert (summary.failed, summary.retried) == (0, 1) and summary.speedup <= 2 + EPSILON


def test_the_finished_tasks_of_a_lost_chunk_keep_their_own_time(
        cluster: Cluster, tmp_path: Path) -> None:
    # They shared the attempt's whole time with the task it died in, up to when its
    # death was noticed: over ssh, a 0.05 s task was recorded as 0.15-0.20 s and
    # named among the slowest; on Slurm, 0.5 s.  Its page now says when the task
    # it died in began.
    marker = str(tmp_path / "died-once")

    def naps_then_dies_at_3(x: int) -> int:
        if x == 3 and not os.path.exists(marker):
            time.sleep(0.05)
            open(marker, "w").close()
            os._exit(3)
        time.sleep(0.1)
        return x

    with cluster.profile() as prof:
        assert cluster.par_map(naps_then_dies_at_3, range(4), chunksize=4, retries=1) == [
            0, 1, 2, 3]
    first = {task.index: task for task in prof.tasks if task.attempt == 1}
    assert [(index, first[index].ok) for index in sorted(first)] == [
        (0, True), (1, True), (2, True), (3, False)]
    for index in (0, 1, 2):
        assert 0.1 - EPSILON <= first[index].seconds < 0.2, first[index]
        assert first[index].finished <= first[3].started + EPSILON
    assert first[3].seconds < 0.1 + 0.05, first[3]  # its 0.05 s, and the noticing


def test_a_task_waiting_behind_a_lost_one_has_no_failed_attempt(
        cluster: Cluster, tmp_path: Path) -> None:
    # Task 3 waited on the dying worker, never ran there, yet had a failed attempt 1
    # spanning the whole map; its real run was attempt 1 too.
    marker = str(tmp_path / "died-once")

    def dies_at_1(x: int) -> int:
        time.sleep(0.02)  # short: the scheduler queues a chunk behind it (prefetch)
        if x == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        return x

    with cluster.profile() as prof:
        assert cluster.par_map(dies_at_1, range(4), chunksize=1, retries=1) == [0, 1, 2, 3]
    runs = sorted((task.index, task.attempt, task.ok) for task in prof.tasks)
    assert runs == [(0, 1, True), (1, 1, False), (1, 2, True), (2, 1, True), (3, 1, True)]
    lost = next(task for task in prof.tasks if not task.ok)
    ahead = [task.finished for task in prof.tasks
             if task.worker == lost.worker and task.ok and task.started < lost.started]
    assert lost.started >= max(ahead, default=0) - EPSILON  # not before the task ahead ended
    for worker in prof.summary().workers:  # none stays busy after its end
        ended = max(task.finished for task in prof.tasks if task.worker == worker.worker)
        assert worker.busy <= ended - prof.started + EPSILON


def test_workers_replaced_in_the_block_count_only_while_they_were_there(
        cluster: Cluster) -> None:
    # All four workers were counted for the whole block: efficiency halved.
    with cluster.profile() as prof:
        cluster.par_map(time.sleep, [0.1] * 4, chunksize=1)
        cluster.restart()
        cluster.par_map(time.sleep, [0.1] * 4, chunksize=1)
    summary = prof.summary()
    assert len(summary.workers) == 4
    present = sum(w.busy + w.overhead + w.idle for w in summary.workers)
    assert present <= 2 * summary.wall + EPSILON
    assert summary.efficiency == pytest.approx(
        sum(w.busy for w in summary.workers) / present)


def test_a_task_running_past_an_inner_block_is_not_in_it_with_or_without_an_outer_one(
        shared_cluster: Cluster) -> None:
    for nested in (False, True):
        with shared_cluster.profile() if nested else contextlib.nullcontext():
            with shared_cluster.profile() as inner:
                future = shared_cluster.submit(time.sleep, 0.2)
            assert future.result() is None
        assert inner.tasks == [], nested


def test_reading_a_profile_before_its_block_ends_is_an_error(shared_cluster: Cluster) -> None:
    with shared_cluster.profile() as prof:
        with pytest.raises(RuntimeError, match="once its `with` block has ended"):
            prof.tasks  # noqa: B018
        assert repr(prof) == "<Profile (recording)>"
    assert repr(shared_cluster.profile()) == "<Profile (not started)>"
    with pytest.raises(RuntimeError, match="records once"), prof:
        pass


def test_a_closed_cluster_refuses_to_profile() -> None:
    cl = Cluster(n=1)
    cl.close()
    with pytest.raises(sockpool.ClusterClosedError):
        cl.profile()


def test_the_plans_cluster_is_profiled_by_sockpool_profile() -> None:
    with sockpool.plan(n=2), sockpool.profile() as prof:
        assert sockpool.par_map(abs, [-1, -2, -3]) == [1, 2, 3]
    assert isinstance(prof, Profile)
    assert sorted(task.index for task in prof.tasks) == [0, 1, 2]
    assert all(isinstance(task, TaskRecord) for task in prof.tasks)



def test_the_sequential_plan_is_profiled_as_one_worker(tmp_path: Path) -> None:
    # It raised RuntimeError: code wrapped in `with sockpool.profile()` broke when
    # the plan was switched to sequential.
    with sockpool.plan("sequential"), sockpool.profile() as prof:
        assert sockpool.par_map(sleepy, range(6), errors="return")[:5] == [0, 1, 4, 9, 16]
        assert sockpool.submit(abs, -1).result() == 1
    mapped = [task for task in prof.tasks if task.function == "sleepy"]
    assert [(task.index, task.ok) for task in mapped] == [(0, True), (1, True), (2, True),
                                                           (3, True), (4, True), (5, False)]
    (submitted,) = [task for task in prof.tasks if task.function == "abs"]
    assert submitted.call > mapped[0].call
    assert {(task.worker, task.host, task.attempt) for task in prof.tasks} == {
        (0, "localhost", 1)}
    assert mapped[0].seconds >= 0.02 and mapped[4].seconds >= 0.02
    assert all(prof.started <= task.started <= task.finished <= prof.stopped
               for task in prof.tasks)
    summary = prof.summary()
    assert (summary.tasks, summary.failed, len(summary.workers)) == (7, 1, 1)
    assert 0 < summary.efficiency <= 1
    prof.to_chrome_trace(str(tmp_path / "trace.json"))
    assert len([e for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
                if e["ph"] == "X"]) == 7


def test_plot_without_matplotlib_names_the_extra() -> None:
    program = """
import sys
sys.modules["matplotlib"] = None  # as if it were not installed
from sockpool import Cluster
with Cluster(n=1) as cl:
    with cl.profile() as prof:
        cl.par_map(abs, [1])
    assert "pip install 'sockpool[plot]'" in prof._repr_html_()
    try:
        prof.plot()
    except ImportError as exc:
        print(exc)
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "Profile.plot() needs matplotlib: pip install 'sockpool[plot]'"


def task_clock(_: int) -> float:
    time.sleep(0.005)
    return time.time()


@pytest.mark.timeout(180)
def test_remote_workers_clocks_are_aligned_within_the_stated_error(
        namespace_hosts: Testbed) -> None:
    # The namespace hosts share this machine's clock, so a task's own reading of
    # time.time() must fall inside its record once put on the master's clock.
    with Cluster(hosts=["sp-n1", "sp-n2"], python=sys.executable, heartbeat_interval=0.2) as cl:
        time.sleep(1.0)  # a few probes: the offset comes from the best of them
        with cl.profile() as prof:
            readings = cl.par_map(task_clock, range(20), chunksize=1)
        page = cl._repr_html_()  # remote workers report their own CPU and memory
        rows = re.findall(r"<td>(sp-n\d)</td><td>\d+</td><td>\w+</td><td>(\d+)</td>"
                          r"<td>[\d.]+ s</td><td>[\d.]+ [kMG]?B</td>", page)
        assert sorted(host for host, _ in rows) == ["sp-n1", "sp-n2"]
        assert sum(int(done) for _, done in rows) == 20
    assert sorted(task.index for task in prof.tasks) == list(range(20))
    error = prof.clock_error
    # Half the best round trip of the last 8 over the namespaces' veth links: well under a
    # millisecond on a quiet machine, a few on one loaded many times over.
    assert 0 < error < 0.05
    assert {task.host for task in prof.tasks} == {"sp-n1", "sp-n2"}
    for task in prof.tasks:
        assert task.started - error - EPSILON <= readings[task.index]
        assert readings[task.index] <= task.finished + error + EPSILON
