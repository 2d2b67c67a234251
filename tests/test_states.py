"""The state machines and typed values the layers hand each other, as pure units.

The cluster's lifecycle, the worker's phase, a map's options and the worker's
launch configuration: each is one value with its transitions or checks in one
place, so each is tested here without processes.
"""

from __future__ import annotations

import json
import signal

import pytest

from sockpool import ClusterClosedError, LaunchError, NoWorkersLeftError, SockpoolError
from sockpool.api.map_options import MapOptions
from sockpool.common.config import CurveKeys, WorkerConfig
from sockpool.dispatch.lifecycle import ClusterState, Lifecycle
from sockpool.worker.state import Interrupted, WorkerPhase, WorkerState

pytestmark = pytest.mark.timeout(30)


# -- the cluster's lifecycle ---------------------------------------------------------------


def test_a_cluster_drains_then_stops_then_closes() -> None:
    life = Lifecycle()
    assert life.state is ClusterState.OPEN and life.takes_work and life.wants_workers
    assert life.move(ClusterState.DRAINING)
    assert not life.takes_work and life.wants_workers  # queued work still needs workers
    assert life.move(ClusterState.STOPPING)
    assert not life.wants_workers and not life.closed.is_set()
    assert life.move(ClusterState.CLOSED)
    assert life.closed.is_set()
    assert not life.move(ClusterState.OPEN)  # closed is final
    assert life.state is ClusterState.CLOSED


def test_transitions_that_make_no_sense_are_refused() -> None:
    life = Lifecycle()
    assert not life.move(ClusterState.CLOSED)  # only after stopping
    assert life.move(ClusterState.STOPPING)
    assert not life.move(ClusterState.DRAINING)  # no way back from stopping
    assert not life.break_down(NoWorkersLeftError("gone"))
    assert life.state is ClusterState.STOPPING and life.error is None


def test_a_broken_cluster_refuses_work_with_the_one_no_worker_error() -> None:
    life = Lifecycle()
    assert life.refusal().__class__ is ClusterClosedError
    assert life.break_down(NoWorkersLeftError("no worker is left; last: worker 3 exit code 1"))
    assert life.state is ClusterState.BROKEN and not life.takes_work
    assert not life.wants_workers
    error = life.refusal()
    assert isinstance(error, NoWorkersLeftError)
    assert "no worker is left" in str(error)
    # what code that caught the old errors catches still catches it
    assert isinstance(error, LaunchError) and isinstance(error, ClusterClosedError)
    assert isinstance(error, RuntimeError) and isinstance(error, SockpoolError)
    assert life.move(ClusterState.STOPPING)  # close() still ends it


def test_a_draining_cluster_cannot_break_it_stops_once_its_work_has_failed() -> None:
    life = Lifecycle()
    life.move(ClusterState.DRAINING)
    assert not life.break_down(NoWorkersLeftError("gone"))
    assert life.state is ClusterState.DRAINING


def test_the_repr_words_of_the_states() -> None:
    assert [state.value for state in ClusterState] == [
        "running", "closing", "stopping", "closed", "broken"]


# -- the worker's phase ---------------------------------------------------------------------


def test_a_chunk_runs_and_ends() -> None:
    state = WorkerState()
    assert state.start_chunk(7)
    assert state.now == (WorkerPhase.RUNNING, 7)
    state.on_sigint(signal.SIGINT, None)  # an outside SIGINT while running: ignored
    state.end_chunk()
    assert state.now == (WorkerPhase.IDLE, None)


def test_cancelling_the_running_job_interrupts_it_once() -> None:
    state = WorkerState()
    state.start_chunk(7)
    assert not state.cancel(8)  # another job: nothing runs of it
    assert state.cancel(7)
    assert state.now == (WorkerPhase.CANCELLING, 7)
    with pytest.raises(Interrupted):
        state.on_sigint(signal.SIGINT, None)
    assert not state.cancel(7)  # already signalled
    state.end_chunk()
    assert not state.start_chunk(7)  # a later chunk of a cancelled job never starts
    assert state.start_chunk(9)


def test_shutdown_is_final_and_interrupts_only_a_running_chunk() -> None:
    idle = WorkerState()
    assert not idle.shutdown()
    assert idle.stopping and not idle.start_chunk(1)
    running = WorkerState()
    running.start_chunk(1)
    assert running.shutdown()
    with pytest.raises(Interrupted):
        running.on_sigint(signal.SIGINT, None)
    running.end_chunk()
    assert running.now == (WorkerPhase.STOPPING, None)


# -- a map's options -----------------------------------------------------------------------


@pytest.mark.parametrize(("options", "named"), [
    ({"chunksize": 0}, "chunksize"),
    ({"chunksize": True}, "chunksize"),
    ({"retries": -1}, "retries"),
    ({"errors": "ignore"}, "errors"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": "5"}, "timeout"),
    ({"schedule": "guided"}, "schedule"),
    ({"seed": -3}, "seed"),
])
def test_bad_map_options_are_named(options: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MapOptions(**options)  # type: ignore[arg-type]


def test_chunk_sizes() -> None:
    assert MapOptions().chunk_size(100, 2) == 13  # about four chunks per worker
    assert MapOptions(timeout=1.0).chunk_size(100, 2) == 1
    assert MapOptions(chunksize=1, timeout=1.0).chunk_size(100, 2) == 1
    # A time limit is per task: a chunk of several would time them together (the
    # finished ones' results lost, the unstarted ones failed as timed out).
    with pytest.raises(ValueError, match="chunksize=7 cannot be given with timeout="):
        MapOptions(chunksize=7, timeout=1.0)
    assert MapOptions().lazy_chunk_size is None  # grown from measured task times
    assert MapOptions(timeout=2).lazy_chunk_size == 1


# -- the worker's launch configuration -------------------------------------------------------


def test_a_worker_config_travels_as_one_json_line() -> None:
    config = WorkerConfig(address="ipc:///tmp/x", token="t", worker_id=3, heartbeat_interval=1.0,
                          master_timeout=60.0, serializer="dill", max_frame_bytes=1 << 20,
                          curve=CurveKeys("s", "p", "k"), sys_path=("/a", "/b"))
    line = config.to_json()
    assert "\n" not in line
    assert WorkerConfig.from_json(line) == config
    assert WorkerConfig.from_json(line.encode()).replace(worker_id=4).worker_id == 4


@pytest.mark.parametrize("text", ["not json", "[1, 2]", json.dumps({"address": "ipc://x"})])
def test_what_is_not_a_worker_config_says_so(text: str) -> None:
    with pytest.raises(ValueError, match="not a sockpool worker configuration"):
        WorkerConfig.from_json(text)
