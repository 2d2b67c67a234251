"""CPython's own executor tests (``Lib/test/test_concurrent_futures``), run against Cluster.

Nothing of CPython's source is copied here: the test classes are imported from the
running interpreter's standard test package, where it is installed (CPython 3.12+
ships it as a package; CI's Python 3.13 has it and runs this module in ``.ci/versions``).
Elsewhere the module is skipped, saying so.

Each CPython test class (``ExecutorTest``, ``WaitTests``, ``AsCompletedTests``,
``ExecutorShutdownTest``, ``ExecutorDeadlockTest``) gets ``executor_type`` set to
:func:`cluster_executor`, which builds ``Cluster(n=max_workers)``.  What cannot apply
to a pool of processes over sockets is skipped with its reason (:data:`NOT_APPLICABLE`);
where sockpool deliberately answers otherwise than ``ProcessPoolExecutor``, the reason
says what it does instead and which of our tests asserts that.
"""

from __future__ import annotations

import functools
import unittest
from collections.abc import Callable
from typing import Any

import pytest

from sockpool import Cluster

cpython_tests = pytest.importorskip(
    "test.test_concurrent_futures.executor",
    reason="this interpreter has no CPython test package with test_concurrent_futures "
           "(CI runs this module on Python 3.13)")
from test.test_concurrent_futures import (  # noqa: E402
    test_as_completed,
    test_deadlock,
    test_shutdown,
    test_wait,
    util,
)

pytestmark = pytest.mark.timeout(120)


def cluster_executor(max_workers: int | None = None, mp_context: Any = None,
                     initializer: Callable[..., Any] | None = None,
                     initargs: tuple[Any, ...] = ()) -> Cluster:
    """``ProcessPoolExecutor``'s constructor, answered by a Cluster (``mp_context`` has no
    meaning for workers that are not forked by multiprocessing)."""
    setup = None if initializer is None else functools.partial(initializer, *initargs)
    return Cluster(n=max_workers, setup=setup)


class ClusterMixin(util.ExecutorMixin):
    """CPython's ExecutorMixin, with a Cluster of ``worker_count`` workers."""

    executor_type = staticmethod(cluster_executor)

    def get_context(self) -> None:
        return None


PICKLES_IN_SUBMIT = (
    "sockpool serializes a task's arguments in submit(), so a PicklingError (a "
    "CaptureError) is raised by submit itself, before any future exists "
    "(tests/test_capture.py)")
LOST_NOT_BROKEN = (
    "a worker that dies fails its task with WorkerLostError and is replaced: the pool "
    "is not 'broken' as ProcessPoolExecutor's is (tests/test_faults.py)")
AS_REMOTE_ERROR = (
    "sockpool's documented answer (docs/guide.md, Errors): a task's SystemExit, and a "
    "result that cannot be serialized, fail the task with RemoteError and the worker "
    "lives on; ProcessPoolExecutor re-raises the SystemExit or PicklingError itself "
    "(tests/test_par_map.py, tests/test_executor.py)")
NOT_APPLICABLE: dict[str, str] = {
    # ExecutorTest
    "test_max_workers_negative":
        "Cluster takes n=, not max_workers=; Cluster(n=0) raises its own ValueError",
    # ExecutorShutdownTest: these start `concurrent.futures.<executor_type.__name__>(5)`
    # in a child interpreter, which names no sockpool class.
    "test_interpreter_shutdown": "runs concurrent.futures' own executor in a child "
                                 "interpreter (sockpool's exit backstops: test_lifecycle.py)",
    "test_submit_after_interpreter_shutdown": "runs concurrent.futures' own executor in a "
                                              "child interpreter",
    "test_hang_gh83386": "runs concurrent.futures' own executor in a child interpreter",
    # ProcessPoolShutdownTest reaches into ProcessPoolExecutor's private _processes,
    # _call_queue and _executor_manager_thread.
    "test_processes_terminate": "reads ProcessPoolExecutor._processes",
    "test_context_manager_shutdown": "reads ProcessPoolExecutor._processes",
    "test_del_shutdown": "reads ProcessPoolExecutor._executor_manager_thread",
    "test_shutdown_no_wait": "reads ProcessPoolExecutor._call_queue",
    # ExecutorDeadlockTest
    "test_error_at_task_pickle": PICKLES_IN_SUBMIT,
    "test_shutdown_deadlock_pickle": PICKLES_IN_SUBMIT,
    "test_exit_during_func_exec_on_worker": AS_REMOTE_ERROR,
    "test_exit_during_result_pickle_on_worker": AS_REMOTE_ERROR,
    "test_error_during_result_pickle_on_worker": AS_REMOTE_ERROR,
    "test_exit_at_task_unpickle": LOST_NOT_BROKEN,
    "test_error_at_task_unpickle": LOST_NOT_BROKEN,
    "test_crash_at_task_unpickle": LOST_NOT_BROKEN,
    "test_crash_during_func_exec_on_worker": LOST_NOT_BROKEN,
    "test_crash_during_result_pickle_on_worker": LOST_NOT_BROKEN,
    "test_error_during_result_unpickle_in_result_handler": LOST_NOT_BROKEN,
    "test_exit_during_result_unpickle_in_result_handler": LOST_NOT_BROKEN,
    "test_shutdown_deadlock": LOST_NOT_BROKEN,
    "test_crash_big_data": LOST_NOT_BROKEN,
    "test_gh105829_should_not_deadlock_if_wakeup_pipe_full":
        "patches ProcessPoolExecutor's private _ExecutorManagerThread and _ThreadWakeup",
}


def _with_cluster(name: str, tests: type) -> type:
    """``tests`` (a CPython mixin of test methods) as a TestCase on a Cluster."""
    skipped = {
        method: unittest.skip(reason)(getattr(tests, method))
        for method, reason in NOT_APPLICABLE.items() if hasattr(tests, method)
    }
    return type(name, (ClusterMixin, tests, util.BaseTestCase),
                {"__module__": __name__, **skipped})


TestExecutor = _with_cluster("TestExecutor", cpython_tests.ExecutorTest)
TestWait = _with_cluster("TestWait", test_wait.WaitTests)
TestAsCompleted = _with_cluster("TestAsCompleted", test_as_completed.AsCompletedTests)
TestShutdown = _with_cluster("TestShutdown", test_shutdown.ProcessPoolShutdownTest)
TestDeadlock = _with_cluster("TestDeadlock", test_deadlock.ExecutorDeadlockTest)
