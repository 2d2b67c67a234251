"""The joblib backend "sockpool": real joblib and scikit-learn code on a real cluster.

What a user switching ``n_jobs`` code onto a cluster relies on: the same
results as ``n_jobs=1``, errors of their own type, the first failure stopping
the rest, streaming generators, nested ``Parallel`` in the worker, worker
output at home, and bad settings refused before any work.  joblib's own
backend tests run against the backend in tests/test_joblib_suite.py.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from helpers import run_script, wait_gone

joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

from joblib import Parallel, delayed, parallel_config  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

import sockpool  # noqa: E402
import sockpool.joblib  # noqa: E402
from sockpool import Cluster  # noqa: E402

pytestmark = pytest.mark.timeout(120)


class BadInput(Exception):
    """An exception class of the user's own."""


def square(x: int) -> int:
    return x * x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise BadInput(f"task {x} is bad")
    return x


def sleep_then_mark(x: int, directory: str) -> int:
    if x == 0:
        raise KeyError("first")
    time.sleep(0.5)
    Path(directory, str(x)).touch()
    return x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_for_file(x: int, path: str) -> str:
    # Only the master writes the file, after it has the first result.
    if x == 0:
        return "first"
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return "not streamed"
        time.sleep(0.01)
    return "after"


def nested(x: int) -> tuple[int, list[int], str]:
    inner = Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(4))
    backend = type(joblib.parallel.get_active_backend()[0]).__name__
    return os.getpid(), inner, backend


def nested_on_sockpool(x: int) -> tuple[int, list[int]]:
    # A task that names the backend itself: inside a task the plan is sequential.
    import sockpool.joblib  # noqa: F401

    return os.getpid(), Parallel(n_jobs=-1, backend="sockpool")(
        delayed(os.getpid)() for _ in range(4))


def shout(x: int) -> int:
    print(f"worker says {x}")
    return x


def test_grid_search_gives_the_results_of_n_jobs_1(shared_cluster: Cluster) -> None:
    X, y = load_iris(return_X_y=True)
    grid = {"max_depth": [1, 2, 3, None], "min_samples_leaf": [1, 5]}
    sequential = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3, n_jobs=1)
    sequential.fit(X, y)
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        parallel = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3, n_jobs=-1)
        parallel.fit(X, y)
    assert parallel.best_params_ == sequential.best_params_
    assert list(parallel.cv_results_["mean_test_score"]) == \
        list(sequential.cv_results_["mean_test_score"])
    assert parallel.best_score_ == sequential.best_score_


def test_cross_val_score_gives_the_scores_of_n_jobs_1(shared_cluster: Cluster) -> None:
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500)
    expected = cross_val_score(model, X, y, cv=5, n_jobs=1)
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        scores = cross_val_score(model, X, y, cv=5, n_jobs=-1)
    assert list(scores) == list(expected)


def _uniform(_: int) -> float:
    return random.random()


def test_a_joblib_call_leaves_the_seeded_calls_after_it_as_they_were(
        shared_cluster: Cluster) -> None:
    # Its batches, as many as joblib's timing makes, counted as seeded calls: a
    # seeded map after a joblib call drew other numbers, run to run and plan to plan.
    try:
        shared_cluster.set_seed(7)
        alone = shared_cluster.par_map(_uniform, range(4))
        shared_cluster.set_seed(7)
        with parallel_config(backend="sockpool", cluster=shared_cluster):
            squares = Parallel(n_jobs=2)(delayed(square)(i) for i in range(200))
        assert squares == [i * i for i in range(200)]
        assert shared_cluster.par_map(_uniform, range(4)) == alone
    finally:
        shared_cluster.set_seed(None)


def test_n_jobs_minus_one_is_every_worker_of_the_cluster(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        assert joblib.effective_n_jobs(-1) == shared_cluster.n_workers == 2
        assert joblib.effective_n_jobs(-2) == 1
        assert joblib.effective_n_jobs(5) == 5


def timed_sleep(seconds: float) -> tuple[float, float]:
    started = time.monotonic()
    time.sleep(seconds)
    return started, time.monotonic()


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


@pytest.mark.filterwarnings("ignore:.*usable physical cores")
def test_n_jobs_caps_the_batches_running_at_once_on_a_larger_cluster() -> None:
    # joblib keeps 2 * n_jobs batches in flight: each ran as soon as a worker was free.
    with Cluster(n=3) as cl:
        for n_jobs, expected in ((1, 1), (2, 2), (-2, 2), (-1, 3)):
            for return_as in ("list", "generator"):
                spans = list(Parallel(n_jobs=n_jobs, backend="sockpool", cluster=cl,
                                      batch_size=1, return_as=return_as)(
                    delayed(timed_sleep)(0.5) for _ in range(4)))
                most = _most_at_once(spans)  # (all at once needs none delayed 0.5 s)
                assert min(expected, 2) <= most <= expected, (n_jobs, return_as, spans)


def test_short_batches_never_wait_behind_a_long_one(shared_cluster: Cluster) -> None:
    # With n_jobs the cluster's size a worker holds a batch queued behind the one it
    # runs; one queued behind the long batch would wait 3 s while the other worker
    # idled.  Every short batch ends on the other worker long before the long one.
    spans = Parallel(n_jobs=2, backend="sockpool", cluster=shared_cluster, batch_size=1)(
        delayed(timed_sleep)(3.0 if i == 0 else 0.02) for i in range(40))
    long_ended = spans[0][1]
    assert all(end < long_ended - 0.5 for _, end in spans[1:]), spans


def fill_slot(out: np.ndarray, index: int) -> None:
    out[index] = index + 1


def test_tasks_write_into_a_writable_memmap_as_under_loky(shared_cluster: Cluster,
                                                          tmp_path: Path) -> None:
    # joblib's "write results into shared memory": the writes were lost on a copy.
    out = np.memmap(tmp_path / "out.mmap", dtype="f8", shape=(8,), mode="w+")
    Parallel(n_jobs=2, backend="sockpool", cluster=shared_cluster)(
        delayed(fill_slot)(out, i) for i in range(8))
    assert out.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def test_tasks_run_on_the_cluster_in_order(shared_cluster: Cluster) -> None:
    workers = {w.pid for w in shared_cluster.workers}
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        assert Parallel(n_jobs=-1)(delayed(square)(i) for i in range(1000)) == \
            [i * i for i in range(1000)]
        pids = set(Parallel(n_jobs=2, batch_size=1)(delayed(os.getpid)() for _ in range(20)))
    assert pids <= workers and os.getpid() not in pids


def test_an_exception_keeps_its_type(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        with pytest.raises(BadInput, match="task 3 is bad"):
            Parallel(n_jobs=2)(delayed(fail_on)(i, 3) for i in range(10))
        with pytest.raises(ZeroDivisionError):
            Parallel(n_jobs=2)(delayed(divmod)(1, i) for i in [1, 0, 2])
        # the cluster still serves the next call
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_an_exceptions_note_names_its_batch_not_task_0(shared_cluster: Cluster) -> None:
    # Each batch is one sockpool task: the note said "task 0" whichever task failed.
    with parallel_config(backend="sockpool", cluster=shared_cluster), \
            pytest.raises(BadInput) as failed:
        Parallel(n_jobs=2, batch_size=1)(delayed(fail_on)(i, 7) for i in range(10))
    notes = failed.value.__notes__
    assert len(notes) == 1 and notes[0].startswith(
        "sockpool: a joblib batch of fail_on failed on worker "), notes


class _HoldsALock:
    def __init__(self) -> None:
        self.settings = {"inner": [1, {"lock": threading.Lock()}]}

    def work(self, x: int) -> int:
        return x


def test_what_cannot_travel_is_named_by_its_path_as_cluster_submit_names_it(
        shared_cluster: Cluster) -> None:
    # The batch is the one argument sockpool sends: the error named "positional
    # argument 0: joblib.parallel.BatchedCalls", not the call or what failed in it.
    holder = _HoldsALock()
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        with pytest.raises(sockpool.CaptureError) as failed:
            Parallel(n_jobs=2)(delayed(square)(i) if i < 3 else delayed(holder.work)(i)
                               for i in range(6))
        assert "work -> __self__.settings['inner'][1]['lock']: _thread.lock" in str(
            failed.value)
        assert failed.value.__notes__ == ["sockpool: in the joblib call _HoldsALock.work(...)"]
        assert isinstance(failed.value.__cause__, TypeError)  # the pickler's own, as submit's
        with pytest.raises(sockpool.CaptureError,
                           match=r"keyword argument 'h'.settings\['inner'\]\[1\]"):
            Parallel(n_jobs=2)(delayed(functools.partial)(square, h=holder) for _ in range(2))
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


BIG = [float(i) for i in range(300_000)]  # 2.7 MB pickled


def _adds_big(x: int, extra: Any = None) -> float:
    return x + BIG[0]


def test_a_call_that_cannot_travel_is_named_though_its_function_is_over_the_size_limit(
        ) -> None:
    # A batch's functions are not held to max_capture_size: naming the call that
    # failed by packing each alone under the limit blamed the size, not the lock.
    with Cluster(n=1, max_capture_size=1_000_000) as cl, \
            parallel_config(backend="sockpool", cluster=cl):
        assert Parallel(batch_size=4)(delayed(_adds_big)(i) for i in range(2)) == [0.0, 1.0]
        with pytest.raises(sockpool.CaptureError, match=r"positional argument 1: _thread\.lock"):
            Parallel(batch_size=4)(delayed(_adds_big)(*call)
                                   for call in [(0,), (1, threading.Lock())])


def _dies_on(i: int, bad: int) -> int:
    if i == bad:
        print("item", i, "is about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def test_a_lost_worker_names_its_batch_and_what_it_wrote_last() -> None:
    # The message said "while running task 0" whichever item killed the worker,
    # and labelled what its tasks printed "its stderr".
    with Cluster(n=2) as cl, parallel_config(backend="sockpool", cluster=cl), \
            pytest.raises(sockpool.WorkerLostError) as lost:
        Parallel(n_jobs=2, batch_size=1)(delayed(_dies_on)(i, 5) for i in range(8))
    message = str(lost.value)
    assert "killed by SIGKILL" in message and "while running a joblib batch of _dies_on" in message
    assert "task 0" not in message
    assert "its output ends with:\nitem 5 is about to die" in message


def test_a_profile_names_the_functions_of_the_batches(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster), \
            shared_cluster.profile() as prof:
        Parallel(n_jobs=2, batch_size=2)(delayed(square)(i) for i in range(6))
        Parallel(n_jobs=2, batch_size=3)(
            delayed(function)(i) for i in range(3) for function in (square, abs))
    names = {task.function for task in prof.tasks}  # (joblib may split a batch)
    assert {part for name in names for part in name.split(", ")} == {"square", "abs"}, names
    assert "square, abs" in names or "abs, square" in names, names


class Scale:
    """A callable that cannot be hashed (it defines __eq__ alone)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scale) and other.factor == self.factor

    def __call__(self, x: int) -> int:
        return self.factor * x


def test_batches_of_unhashable_callables_and_partials_run_and_are_named(
        shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster), \
            shared_cluster.profile() as prof:
        out = Parallel(n_jobs=2, batch_size=4)(
            delayed(function)(i) for i in range(4)
            for function in (Scale(3), functools.partial(pow, 2)))
    assert out == [value for i in range(4) for value in (3 * i, 2 ** i)]
    names = {part for task in prof.tasks for part in task.function.split(", ")}
    assert names == {"Scale", "pow"}, names


def test_the_first_failure_cancels_the_rest(shared_cluster: Cluster, tmp_path: Path) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster), \
            pytest.raises(KeyError, match="first"):
        Parallel(n_jobs=2, batch_size=1)(
            delayed(sleep_then_mark)(i, str(tmp_path)) for i in range(20))
    time.sleep(1.0)  # what was still running would have finished by now
    marked = list(tmp_path.iterdir())
    # joblib keeps 4 batches in flight (pre_dispatch 2 * n_jobs); those are
    # interrupted, and nothing after them is sent.
    assert len(marked) < 4, marked


def test_a_failure_interrupts_a_long_running_task(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        with pytest.raises(BadInput):
            Parallel(n_jobs=2, batch_size=1)(
                [delayed(sleep_for)(60), delayed(fail_on)(1, 1)])
        started = time.monotonic()
        # Both workers are free again: the 60 s task was interrupted.
        assert Parallel(n_jobs=2, batch_size=1)(
            delayed(sleep_for)(0.5) for _ in range(2)) == [0.5, 0.5]
    assert time.monotonic() - started < 10


def test_an_abort_cancels_only_its_own_call(shared_cluster: Cluster) -> None:
    # One backend instance serves every Parallel call of a parallel_config block.
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        slow = Parallel(n_jobs=2, return_as="generator")(
            delayed(sleep_for)(60) for _ in range(10))
        fast = Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(10))
        started = time.monotonic()
        del slow  # joblib aborts a generator that is collected unfinished
        assert list(fast) == [i * i for i in range(10)]
        took = time.monotonic() - started
        # (Once, in CI, fast waited for slow's 60 s tasks; not reproduced since: say more.)
        assert took < 10, f"fast took {took:.1f} s; workers: {shared_cluster.workers}"


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_a_generator_yields_before_all_are_done(shared_cluster: Cluster, tmp_path: Path,
                                                return_as: str) -> None:
    flag = tmp_path / "first-result-arrived"
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        results = Parallel(n_jobs=2, batch_size=1, return_as=return_as)(
            delayed(wait_for_file)(i, str(flag)) for i in range(6))
        assert next(results) == "first"
        flag.touch()  # the other tasks wait for this: they finish only if we got here
        rest = list(results)
    assert rest == ["after"] * 5


def test_a_nested_parallel_runs_sequentially_in_the_worker(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        results = Parallel(n_jobs=2)(delayed(nested)(i) for i in range(4))
    for outer, inner, backend in results:
        assert outer != os.getpid()
        assert inner == [outer] * 4
        assert backend == "SequentialBackend"


def test_a_nested_sockpool_parallel_runs_in_the_worker(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        results = Parallel(n_jobs=2)(delayed(nested_on_sockpool)(i) for i in range(2))
    for outer, inner in results:
        assert outer != os.getpid()
        assert inner == [outer] * 4


def test_worker_output_reaches_the_master(shared_cluster: Cluster,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        Parallel(n_jobs=2)(delayed(shout)(i) for i in range(3))
    out = capfd.readouterr().out
    assert sorted(line for line in out.splitlines() if line.startswith("worker says")) == \
        ["worker says 0", "worker says 1", "worker says 2"]


def test_script_functions_lambdas_and_closures_travel(tmp_path: Path) -> None:
    result = run_script("""
        from joblib import Parallel, delayed, parallel_config
        import sockpool.joblib
        from sockpool import Cluster

        OFFSET = 10

        def add_offset(x):
            return x + OFFSET

        def make_scaler(k):
            return lambda x: k * x

        if __name__ == "__main__":
            with Cluster(n=2) as cl, parallel_config(backend="sockpool", cluster=cl):
                print(Parallel(n_jobs=2)(delayed(add_offset)(i) for i in range(3)))
                print(Parallel(n_jobs=2)(delayed(lambda x: x ** 2)(i) for i in range(3)))
                print(Parallel(n_jobs=2)(delayed(make_scaler(3))(i) for i in range(3)))
    """, tmp_path)
    assert result.stdout.split("\n")[:3] == ["[10, 11, 12]", "[0, 1, 4]", "[0, 3, 6]"]


def test_a_sockpool_parallel_in_a_module_that_travels_by_value_finds_its_backend(
        tmp_path: Path) -> None:
    # The module's `import sockpool.joblib` (which registers the backend) does not run
    # on a worker when the module travels by value: joblib said "Invalid backend".
    (tmp_path / "analysis.py").write_text(textwrap.dedent("""
        import os
        import sockpool.joblib
        from joblib import Parallel, delayed

        def inner(i):
            return os.getpid(), Parallel(n_jobs=2, backend="sockpool")(
                delayed(abs)(-j) for j in range(3))
    """))
    result = run_script("""
        import analysis
        from joblib import Parallel, delayed
        from sockpool import Cluster

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                print(Parallel(n_jobs=2, backend="sockpool", cluster=cl)(
                    delayed(analysis.inner)(i) for i in range(2)))
    """, tmp_path)
    (first_pid, first), (_, second) = ast.literal_eval(result.stdout.strip())
    assert first == second == [0, 1, 2] and first_pid != os.getpid()


def loky_pids(_: int) -> list[int]:
    return Parallel(n_jobs=2, backend="loky")(delayed(os.getpid)() for _ in range(4))


def test_loky_workers_started_by_a_task_end_with_the_cluster() -> None:
    # loky's executor outlived the worker, whose os._exit skipped loky's exit hook.
    with Cluster(n=1) as cl:
        pids = sorted(set(cl.submit(loky_pids, 0).result()))
    try:
        assert pids and wait_gone(pids, 3) == []  # loky notices an orphaning later
    finally:
        for pid in wait_gone(pids, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_without_cluster_the_plan_decides() -> None:
    with sockpool.plan(n=2):
        with parallel_config(backend="sockpool", n_jobs=-1):
            pids = set(Parallel(batch_size=1)(delayed(os.getpid)() for _ in range(8)))
            assert joblib.effective_n_jobs(-1) == 2
        assert pids == {w.pid for w in sockpool.current_cluster().workers}
    with sockpool.plan("sequential"), parallel_config(backend="sockpool", n_jobs=-1):
        assert Parallel()(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3


def test_n_jobs_1_runs_in_this_process(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        assert Parallel(n_jobs=1)(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3


def test_bad_settings_fail_before_any_worker_starts() -> None:
    children = set(psutil.Process().children(recursive=True))
    with pytest.raises(TypeError, match=r"cluster= must be a sockpool.Cluster.*not str"):
        parallel_config(backend="sockpool", cluster="x")
    with pytest.raises(TypeError, match="takes cluster=, initializer= and initargs=, not 'clustr'"):
        parallel_config(backend="sockpool", clustr=None)
    with pytest.raises(TypeError, match="initializer= must be callable, not int"):
        parallel_config(backend="sockpool", initializer=5)
    with pytest.raises(TypeError, match="initargs= must be a tuple of arguments, not str"):
        Parallel(n_jobs=2, backend="sockpool", initializer=print, initargs="ab")(
            delayed(square)(i) for i in range(2))
    with pytest.raises(ValueError, match="n_jobs == 0"):
        Parallel(n_jobs=0, backend="sockpool")(delayed(square)(i) for i in range(2))
    # joblib's own "SockpoolBackend does not accept setting the inner_max_num_threads
    # argument" (an AssertionError) named no way to get what it asks:
    with pytest.raises(ValueError, match=r"inner_max_num_threads=1: .*Cluster\(threads_per_w"), \
            parallel_config(backend="sockpool", inner_max_num_threads=1):
        Parallel(n_jobs=2)(delayed(square)(i) for i in range(2))
    assert set(psutil.Process().children(recursive=True)) == children


def _initialize(log: str, value: str) -> None:
    os.environ["SOCKPOOL_TEST_INITIALIZED"] = value  # (the worker's process, not a module)
    with open(log, "a") as out:
        out.write(f"{os.getpid()} {value}\n")


def _initialized(x: int) -> tuple[int, int, str | None]:
    time.sleep(0.01)
    return x, os.getpid(), os.environ.get("SOCKPOOL_TEST_INITIALIZED")


def test_a_calls_initializer_runs_once_on_each_worker_before_its_first_batch(
        tmp_path: Path) -> None:
    # Refused before (a ValueError naming Cluster(setup=)): joblib's initializer=
    # and initargs=, as loky takes them, to Parallel or to parallel_config.
    log = tmp_path / "initializer.log"

    def run(value: str, **config: Any) -> set[int]:
        """A call whose tasks all see the value its initializer set; the workers it used."""
        with parallel_config(backend="sockpool", cluster=cl, **config):
            out = Parallel(n_jobs=2, **({} if config else {"initializer": _initialize,
                                                           "initargs": (str(log), value)}))(
                delayed(_initialized)(i) for i in range(40))
        assert [x for x, _, _ in out] == list(range(40))
        assert {seen for _, _, seen in out} == {value}
        return {pid for _, pid, _ in out}

    def runs() -> list[str]:
        return sorted(log.read_text().splitlines())

    with Cluster(n=2) as cl:
        used = run("a")
        assert runs() == sorted(f"{pid} a" for pid in used)
        # The same initializer and arguments, given to parallel_config: not run again.
        used |= run("a", initializer=_initialize, initargs=(str(log), "a"))
        assert runs() == sorted(f"{pid} a" for pid in used)
        # Other arguments: run again on each worker, before its first batch; and the
        # first ones once more after them, as loky's workers would have them.
        again = run("b")
        assert runs() == sorted([f"{pid} a" for pid in used] + [f"{pid} b" for pid in again])
        back = run("a")
        assert runs() == sorted([f"{pid} a" for pid in [*used, *back]]
                                + [f"{pid} b" for pid in again])
    # A worker that replaces one (here after each task) runs it before its first.
    log.unlink()
    with Cluster(n=1, max_tasks_per_worker=1) as cl, \
            parallel_config(backend="sockpool", cluster=cl, initializer=_initialize,
                            initargs=(str(log), "c")):
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(_initialized)(i) for i in range(3))
    assert [seen for _, _, seen in out] == ["c"] * 3
    assert runs() == sorted(f"{pid} c" for _, pid, _ in out) and len(runs()) == 3


def _refuse(reason: str) -> None:
    raise LookupError(reason)


def test_an_initializer_that_fails_fails_the_call_with_its_error(shared_cluster: Cluster) -> None:
    with pytest.raises(LookupError, match="no model at /nowhere"):
        Parallel(n_jobs=2, backend="sockpool", cluster=shared_cluster, initializer=_refuse,
                 initargs=("no model at /nowhere",))(delayed(square)(i) for i in range(4))
    # The cluster goes on, and a call without it never runs it.
    assert Parallel(n_jobs=2, backend="sockpool", cluster=shared_cluster)(
        delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_n_jobs_minus_one_runs_on_a_cluster_of_one_even_while_its_worker_is_replaced() -> None:
    with Cluster(n=1, max_tasks_per_worker=1) as cl, \
            parallel_config(backend="sockpool", cluster=cl, n_jobs=-1):
        assert joblib.effective_n_jobs(-1) == 1
        for _ in range(5):  # each call's worker is replaced after its task
            pids = set(Parallel(batch_size=1)(delayed(os.getpid)() for _ in range(2)))
            assert os.getpid() not in pids, "the call ran in the master, not on the cluster"


def test_a_count_back_to_one_worker_still_runs_on_the_cluster(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster):
        pids = set(Parallel(n_jobs=-2)(delayed(os.getpid)() for _ in range(4)))
    assert pids <= {w.pid for w in shared_cluster.workers}


def test_a_cluster_given_to_one_call_is_that_calls_alone(shared_cluster: Cluster) -> None:
    with parallel_config(backend="sockpool", cluster=shared_cluster, n_jobs=2):
        with Cluster(n=1) as other:
            theirs = set(Parallel(cluster=other)(delayed(os.getpid)() for _ in range(3)))
            assert theirs == {w.pid for w in other.workers}
        ours = set(Parallel()(delayed(os.getpid)() for _ in range(3)))  # other is closed now
    assert ours <= {w.pid for w in shared_cluster.workers}


def test_a_parallel_kept_open_with_its_own_cluster_runs_every_call_there() -> None:
    with sockpool.plan("sequential"), Cluster(n=2) as cl, \
            Parallel(n_jobs=-1, backend="sockpool", cluster=cl) as parallel:
        for _ in range(2):
            pids = set(parallel(delayed(os.getpid)() for _ in range(4)))
            assert pids <= {w.pid for w in cl.workers} and os.getpid() not in pids


@pytest.mark.parametrize(("setup", "message"), [
    ("sys.modules['joblib'] = None", "needs joblib 1.5 or later: pip install 'sockpool[joblib]'"),
    ("import joblib; joblib.__version__ = '1.4.2'",
     "needs joblib 1.5 or later (its backend API), not 1.4.2"),
])
def test_importing_the_backend_without_a_joblib_it_can_use_says_which(
        setup: str, message: str) -> None:
    # joblib 1.3 and 1.4 (the extra allowed them) failed at the first Parallel:
    # "Can't instantiate abstract class SockpoolBackend with abstract method apply_async".
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; {setup}\nimport sockpool.joblib"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"ImportError: sockpool.joblib {message}" in done.stderr
