"""``plan()``: the backend is a setting; module-level maps; the sequential plan keeps a
cluster's semantics; a plan's cluster starts once, lazily, and never leaks."""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, master_program, run_script, wait_gone
from testbed import Testbed

import sockpool
from sockpool import Cluster, ClusterClosedError, RemoteError, TaskTimeoutError
from sockpool.api import plan as plan_module
from sockpool.api import sequential
from sockpool.common.protocol import TIMEOUT_SLACK

pytestmark = pytest.mark.timeout(60)


#: Processes this test process had before the test: other test files' shared
#: clusters, which the counts below leave out.
_before: set[int] = set()


def _live_children() -> set[int]:
    return {p.pid for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(autouse=True)
def no_plan_chosen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no plan chosen and no SOCKPOOL_PLAN; its plan is closed after."""
    monkeypatch.delenv("SOCKPOOL_PLAN", raising=False)
    plan_module._install(None, wait=False)
    _before.clear()
    _before.update(_live_children())
    yield
    plan_module._open_scopes.clear()
    plan_module._install(None, wait=False)


def _children() -> list[int]:
    """The processes started since the test began (and still running)."""
    return sorted(_live_children() - _before)


def _worker_pids() -> list[int]:
    return [w.pid for w in sockpool.current_cluster().workers]


# -- choosing a plan --------------------------------------------------------------------


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: sockpool.plan("bogus"), ValueError,
     r"plan\('bogus'\) is not a plan: the forms are 'sequential', 'local', 'local:N'"),
    (lambda: sockpool.plan("local:two"), ValueError, "is not a plan"),
    (lambda: sockpool.plan("hosts:"), ValueError, "is not a plan"),
    (lambda: sockpool.plan("hosts:a,,b"), ValueError, "is not a plan"),
    (lambda: sockpool.plan(n=0), ValueError, "n must be at least 1"),
    (lambda: sockpool.plan("local:0"), ValueError, r"plan\('local:0'\): n must be at least 1"),
    (lambda: sockpool.plan("local:\u00b2"), ValueError, "is not a plan"),  # "²".isdigit()
    (lambda: sockpool.plan("local:2", n=3), ValueError, "already says n="),
    (lambda: sockpool.plan(n=2, seed=-1), ValueError, "seed must be"),
    (lambda: sockpool.plan(n=2, relay="loud"), ValueError, "relay must be"),
    (lambda: sockpool.plan(hosts=["localhost", "no-such-host-here"]), ValueError,
     "no-such-host-here"),
    (lambda: sockpool.plan(workers=2), TypeError, "Cluster's keyword arguments.*workers"),
    (lambda: sockpool.plan("sequential", n=2), TypeError, "seed= alone, not n"),
    (lambda: sockpool.plan(42), TypeError, "not int"),
])
def test_bad_plans_fail_before_any_worker_starts(call: object, error: type[Exception],
                                                 match: str) -> None:
    before = sockpool.plan()
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
    assert _children() == []
    assert sockpool.plan() is before  # the plan in force did not change


@pytest.mark.parametrize("value", ["bogus", "local:", "local:-1", "hosts", "Sequential"])
def test_a_malformed_sockpool_plan_names_the_variable_and_the_forms(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SOCKPOOL_PLAN", value)
    with pytest.raises(ValueError, match=r"SOCKPOOL_PLAN=.* is not a plan: the forms are "
                                         r"'sequential', 'local', 'local:N'.*'hosts:NAME"):
        sockpool.par_map(abs, [1])
    assert _children() == []


def test_sockpool_plan_local_zero_is_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKPOOL_PLAN", "local:0")
    with pytest.raises(ValueError, match=r"SOCKPOOL_PLAN='local:0': n must be at least 1"):
        sockpool.current_cluster()
    assert _children() == []


def test_sockpool_plan_chooses_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKPOOL_PLAN", "sequential")
    assert sockpool.par_map(os.getpid, [()] * 0) == []
    assert sockpool.par_map(lambda _: os.getpid(), range(3)) == [os.getpid()] * 3
    plan_module._install(None, wait=False)
    monkeypatch.setenv("SOCKPOOL_PLAN", "local:2")
    assert repr(sockpool.plan()) == "<sockpool plan: Cluster(n=2), not started>"
    assert _children() == []  # lazily: nothing until the first call
    pids = set(sockpool.par_map(lambda _: os.getpid(), range(20), chunksize=1))
    assert pids <= set(_worker_pids()) and len(_worker_pids()) == 2
    plan_module._install(None, wait=False)
    monkeypatch.setenv("SOCKPOOL_PLAN", "hosts:localhost,localhost")
    assert sockpool.current_cluster().n_workers == 2


def test_the_default_is_a_local_cluster_of_detect_cores_workers() -> None:
    assert sockpool.current_cluster().n_workers == sockpool.detect_cores()
    assert repr(sockpool.plan()).startswith("<sockpool plan: Cluster(), <Cluster local")


def test_changing_the_plan_closes_its_cluster_and_with_restores_the_previous() -> None:
    sockpool.plan(n=1)
    first = _worker_pids()
    with sockpool.plan("sequential") as scoped:
        assert scoped.sequential
        assert wait_gone(first, 5) == []  # the plan changed: its cluster is closed
        assert sockpool.par_map(lambda _: os.getpid(), range(2)) == [os.getpid()] * 2
        with sockpool.plan(n=2):
            inner = _worker_pids()
            assert len(inner) == 2
        assert wait_gone(inner, 5) == []  # the with ended: closed
        assert sockpool.plan() is scoped
    assert not sockpool.plan().sequential
    again = _worker_pids()  # the previous plan is back, with a fresh cluster
    assert len(again) == 1 and again != first


def test_withs_of_two_threads_that_overlap_leave_each_other_and_the_user_their_plans() -> None:
    # The plan is the process's.  A with that ended under another thread's still open
    # put its own previous plan back: the other thread's next map ran in this process,
    # and when that one ended, the first with's plan was left in force for good.
    sockpool.plan("sequential")
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first() -> None:
        with sockpool.plan(n=1):
            first_in.set()
            second_in.wait(30)
        first_out.set()

    def second() -> None:
        first_in.wait(30)
        with sockpool.plan(n=2) as mine:
            second_in.set()
            first_out.wait(30)
            seen["in force"] = sockpool.plan() is mine
            seen["workers"] = len(sockpool.current_cluster().workers)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen == {"in force": True, "workers": 2}
    assert sockpool.plan().sequential


def test_with_over_the_plan_in_force_changes_nothing() -> None:
    sockpool.plan("sequential")
    chosen = sockpool.plan(n=1)  # installed without a with
    pids = _worker_pids()
    with sockpool.plan() as same:  # "the plan in force": leaving it restores nothing
        assert same is chosen
    assert sockpool.plan() is chosen
    assert _worker_pids() == pids  # its cluster still runs
    with sockpool.plan(n=1) as scoped:
        with sockpool.plan():
            pass
        assert sockpool.plan() is scoped
    assert sockpool.plan() is chosen  # the outer with still restores its previous plan


def _sleep_then(i: int) -> int:
    time.sleep(0.05)
    return i


def test_a_plan_change_lets_a_half_read_imap_deliver_what_it_sent() -> None:
    sockpool.plan(n=2)
    results = sockpool.imap(_sleep_then, range(40))
    got = [next(results) for _ in range(3)]
    time.sleep(0.3)
    sockpool.plan("sequential")  # closes the cluster once what was sent has run
    with pytest.raises(ClusterClosedError, match=r"or a new sockpool.plan\(\)\) before this "
                       r"call had sent all its input: the results of the (\d+) items"):
        got.extend(results)
    assert len(got) > 3 and got == list(range(len(got)))


def test_a_given_cluster_is_used_and_left_open() -> None:
    with Cluster(n=2) as cl:
        sockpool.plan(cl)
        assert sockpool.current_cluster() is cl
        pids = {w.pid for w in cl.workers}
        assert set(sockpool.par_map(lambda _: os.getpid(), range(10))) <= pids
        assert set(sockpool.run_on_all(os.getpid)) == pids
        assert sockpool.submit(os.getpid).result(timeout=30) in pids
        assert set(sockpool.imap(lambda _: os.getpid(), range(4))) <= pids
        sockpool.plan("sequential")
        assert cl.par_map(abs, [-1]) == [1]  # still open: the caller owns it
        with pytest.raises(TypeError, match="takes no options"):
            sockpool.plan(cl, n=2)
        sockpool.plan(cl)
    with pytest.raises(ClusterClosedError, match=r"given by sockpool.plan\(cl\), is closed"):
        sockpool.par_map(abs, [-1])
    sockpool.plan("sequential")


def test_two_threads_starting_the_plan_at_once_start_one_cluster() -> None:
    sockpool.plan(n=2)
    barrier = threading.Barrier(2)
    seen: list[tuple[Cluster, list[int]]] = []

    def use() -> None:
        barrier.wait()
        pids = sockpool.par_map(lambda _: os.getpid(), range(8))
        seen.append((sockpool.current_cluster(), pids))

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(seen) == 2 and seen[0][0] is seen[1][0]
    assert len(_children()) == 2


def test_current_cluster_under_the_sequential_plan_says_there_is_none() -> None:
    sockpool.plan("sequential")
    with pytest.raises(RuntimeError, match=r"the plan is 'sequential'.*no cluster"):
        sockpool.current_cluster()


# -- the sequential plan keeps a cluster's semantics ------------------------------------


def _draws(x: int) -> list[float]:
    import numpy as np

    return [x, random.random(), float(np.random.standard_normal()),
            float(sockpool.task_rng().random())]


def test_seeded_streams_are_those_of_a_cluster() -> None:
    pytest.importorskip("numpy")
    with Cluster(n=2, seed=5) as cl:
        expected = [cl.par_map(_draws, range(6), chunksize=4), cl.submit(_draws, 1).result(),
                    cl.par_map(_draws, range(3), seed=99), list(cl.imap(_draws, range(3))),
                    cl.submit(_draws, 2, seed=7).result()]
    sockpool.plan("sequential", seed=5)
    got = [sockpool.par_map(_draws, range(6)), sockpool.submit(_draws, 1).result(),
           sockpool.par_map(_draws, range(3), seed=99), list(sockpool.imap(_draws, range(3))),
           sockpool.submit(_draws, 2, seed=7).result()]
    assert got == expected


def test_a_seeded_sequential_call_leaves_the_callers_random_state_alone() -> None:
    np = pytest.importorskip("numpy")
    sockpool.plan("sequential")
    random.seed(1)
    np.random.seed(1)
    sockpool.par_map(_draws, range(3), seed=4)
    assert (random.random(), np.random.random()) == (
        random.Random(1).random(), np.random.RandomState(1).random_sample())


def test_a_nested_seeded_call_gives_the_task_its_own_stream_back() -> None:
    pytest.importorskip("numpy")

    def outer(x: int) -> list[float]:
        before = sockpool.task_rng().random()
        sockpool.par_map(_draws, range(2), seed=123)
        return [before, sockpool.task_rng().random(), random.random()]

    def plain(x: int) -> list[float]:
        return [sockpool.task_rng().random(), sockpool.task_rng().random(), random.random()]

    sockpool.plan("sequential")
    assert sockpool.par_map(outer, range(3), seed=8) == sockpool.par_map(plain, range(3), seed=8)


def _fails_at_two(x: int) -> int:
    if x == 2:
        raise KeyError(f"no {x}")
    print(f"task {x} ran")
    return x * 10


def test_results_exceptions_and_output_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    sockpool.plan("sequential")
    assert sockpool.par_map(pow, [2, 3], [3, 2]) == [8, 9]
    assert sockpool.par_starmap(pow, [(2, 3), (3, 2)], chunksize=1, ordered=False) == [8, 9]
    with pytest.raises(KeyError, match="no 2") as info:
        sockpool.par_map(_fails_at_two, range(5))
    assert info.value.__notes__ == ["sockpool: task 2 failed in this process"]
    assert info.traceback[-1].name == "_fails_at_two"  # the task's own frame
    assert capsys.readouterr().out == "task 0 ran\ntask 1 ran\n"  # it stopped at the failure
    returned = sockpool.par_map(_fails_at_two, range(4), errors="return")
    assert returned[:2] == [0, 10] and returned[3] == 30 and isinstance(returned[2], KeyError)
    assert capsys.readouterr().out == "task 0 ran\ntask 1 ran\ntask 3 ran\n"
    results = sockpool.imap(_fails_at_two, range(5))
    assert [next(results), next(results)] == [0, 10]
    with pytest.raises(KeyError):
        next(results)  # an ordered imap yields what comes before the failure, then raises


def test_the_same_exception_notes_as_a_cluster(cluster: Cluster) -> None:
    with pytest.raises(KeyError) as remote:
        cluster.par_map(_fails_at_two, range(4))
    sockpool.plan("sequential")
    with pytest.raises(KeyError) as local:
        sockpool.par_map(_fails_at_two, range(4))
    assert remote.value.__notes__[0].startswith("sockpool: task 2 failed on worker ")
    assert local.value.__notes__[0] == "sockpool: task 2 failed in this process"


def test_a_tasks_system_exit_does_not_end_the_caller() -> None:
    sockpool.plan("sequential")
    with pytest.raises(RemoteError, match=r"builtins\.SystemExit: 3") as info:
        sockpool.par_map(sys.exit, [3])
    assert info.value.__notes__ == ["sockpool: task 0 failed in this process"]


def test_imap_runs_each_task_when_its_result_is_asked_for() -> None:
    sockpool.plan("sequential")
    ran: list[int] = []
    results = sockpool.imap(lambda x: ran.append(x) or x, range(100))
    assert ran == []
    assert [next(results), next(results)] == [0, 1] and ran == [0, 1]


class InputBroke(Exception):
    pass


def _input_that_breaks() -> Iterator[int]:
    yield from range(5)
    raise InputBroke("the input broke")


@pytest.mark.parametrize("spec", ["sequential", "local:2"])
def test_imap_over_an_input_that_raises_gives_what_came_before_then_its_error(
        spec: str) -> None:
    sockpool.plan(spec)
    seen = []
    with pytest.raises(InputBroke, match="the input broke"):
        for value in sockpool.imap(_fails_at_two, _input_that_breaks(), errors="return"):
            seen.append(value)
    assert seen[:2] == [0, 10] and isinstance(seen[2], KeyError) and seen[3:] == [30, 40]
    with pytest.raises(InputBroke):  # par_map reads the whole input first: no task runs
        sockpool.par_map(_fails_at_two, _input_that_breaks())


def _with_seed(x: int, seed: int = 0) -> int:
    return x + seed


def test_submit_and_run_on_all() -> None:
    sockpool.plan("sequential")
    with pytest.warns(UserWarning, match=r"submit's seed= is sockpool's") as caught:
        assert sockpool.submit(_with_seed, 1, seed=42).result() == 1
    assert len(caught) == 1 and caught[0].filename == __file__
    future = sockpool.submit(divmod, 7, 2)
    assert future.done() and future.result() == (3, 1)
    failed = sockpool.submit(_fails_at_two, 2)
    assert isinstance(failed.exception(), KeyError)
    assert failed.exception().__notes__ == [  # type: ignore[union-attr]
        "sockpool: the call to _fails_at_two failed in this process"]
    assert sockpool.run_on_all(os.getpid) == [os.getpid()]  # this process is the one worker


def test_options_are_checked_as_a_clusters() -> None:
    sockpool.plan("sequential")
    ran: list[int] = []
    for bad in ({"chunksize": 0}, {"errors": "ignore"}, {"retries": -1}, {"timeout": 0},
                {"seed": -2}, {"schedule": "random"}):
        with pytest.raises(ValueError):
            sockpool.par_map(ran.append, [1], **bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a callable"):
        sockpool.par_map(3, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be iterable"):
        sockpool.par_map(abs, 3)  # type: ignore[call-overload]
    assert ran == []


def test_timeout_interrupts_a_task_in_the_main_thread() -> None:
    sockpool.plan("sequential")

    def stubborn(seconds: float) -> float:
        try:
            time.sleep(seconds)
        except Exception:  # the time limit is not an Exception: it still stops the task
            return -1.0
        return seconds

    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"task 1 ran longer than 0.3 s \(timeout=\) "
                                               "in this process"):
        sockpool.par_map(stubborn, [0.01, 30], timeout=0.3)
    assert time.monotonic() - started < 5
    assert sockpool.par_map(stubborn, [0.01, 30], timeout=0.3, errors="return")[0] == 0.01


def test_the_sequential_plan_gives_a_task_the_slack_a_cluster_does() -> None:
    # A task of 0.52 s with timeout=0.5 ended well on a cluster, whose deadline has
    # 0.05 s of slack, and failed under the sequential plan, whose had none:
    # switching plans changed a result.
    sockpool.plan("sequential")
    started = time.monotonic()
    outcome = sockpool.par_map(time.sleep, [30], timeout=0.3, errors="return")
    assert isinstance(outcome[0], TaskTimeoutError)
    assert 0.3 + TIMEOUT_SLACK <= time.monotonic() - started < 5


def test_a_timer_that_fires_before_the_task_starts_times_the_task_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A timeout of a microsecond fired inside the timer's own setup, before the
    # task had started: the private _TimeLimit (no message, not an Exception)
    # escaped to the caller instead of TaskTimeoutError.
    monkeypatch.setattr(sequential, "TIMEOUT_SLACK", 0.0)  # (a microsecond, not 0.05 s more)
    sockpool.plan("sequential")
    handler = signal.getsignal(signal.SIGALRM)
    for _ in range(200):
        outcome = sockpool.par_map(abs, [-1, -2, -3], timeout=1e-6, errors="return")
        assert all(value in (1, 2, 3) or isinstance(value, TaskTimeoutError)
                   for value in outcome), outcome
        assert signal.getsignal(signal.SIGALRM) == handler  # put back each time


def test_a_timeout_of_years_or_inf_is_no_limit_under_every_plan() -> None:
    # setitimer refused them: OverflowError ("timestamp out of range for platform
    # time_t") from par_map and submit, where a cluster takes them.
    sockpool.plan("sequential")
    for timeout in (float("inf"), 1e300, 1e10):
        assert sockpool.par_map(abs, [-1, -2], timeout=timeout) == [1, 2]
        assert sockpool.submit(abs, -3, timeout=timeout).result() == 3


def test_timeout_elsewhere_fails_the_task_after_it_ends_and_retries_rerun_it() -> None:
    sockpool.plan("sequential")
    runs: list[float] = []

    def slow(seconds: float) -> float:
        runs.append(seconds)
        time.sleep(seconds)
        return seconds

    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(sockpool.par_map(
        slow, [0.01, 0.3], timeout=0.1, retries=1, errors="return")))
    thread.start()
    thread.join(30)
    assert outcome[0][0] == 0.01  # type: ignore[index]
    error = outcome[0][1]  # type: ignore[index]
    assert isinstance(error, TaskTimeoutError)
    assert (error.timeout, error.worker_id, error.stack) == (0.1, None, "")  # (as a cluster's)
    assert "ran longer than 0.1 s (timeout=) in this process, 2 times" in str(error)
    assert runs == [0.01, 0.3, 0.3]  # the task that ran too long ran again (retries=1)


# -- inside a task the plan is sequential -----------------------------------------------


def _nested_report(x: int) -> dict[str, object]:
    report: dict[str, object] = {"pid": os.getpid()}
    report["nested_pids"] = sockpool.par_map(lambda _: os.getpid(), range(3))
    report["nested_values"] = sockpool.par_map(lambda y: y * x, range(3))
    report["children"] = len(psutil.Process().children())
    report["dispatch_loaded"] = "sockpool.dispatch.dispatcher" in sys.modules
    try:
        sockpool.current_cluster()
    except RuntimeError as exc:
        report["current_cluster"] = str(exc)
    return report


def test_a_nested_call_runs_in_the_worker_and_starts_no_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKPOOL_PLAN", "local:2")  # the workers inherit it: they ignore it
    sockpool.plan(n=2)
    for x, report in enumerate(sockpool.par_map(_nested_report, range(2))):
        assert report["nested_pids"] == [report["pid"]] * 3
        assert report["nested_values"] == [0, x, 2 * x]
        assert report["children"] == 0 and report["dispatch_loaded"] is False
        assert "inside a task the plan is sequential" in str(report["current_cluster"])


# -- a plan's cluster never leaks -------------------------------------------------------


def test_interpreter_exit_closes_the_plans_cluster(tmp_path: Path) -> None:
    result = run_script("""
        import json, sockpool
        sockpool.plan(n=2)
        assert sockpool.par_map(abs, [-1, -2]) == [1, 2]
        print(json.dumps([w.pid for w in sockpool.current_cluster().workers]), flush=True)
        # no close: the exit hook stops the plan's workers
    """, tmp_path)
    assert wait_gone(json.loads(result.stdout), 5) == []


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_workers_of_the_plan_exit_when_the_master_is_killed(tmp_path: Path, signum: int) -> None:
    with master_program(tmp_path / "master.py", """
        import json, time, sockpool
        sockpool.plan(n=2)
        print(json.dumps([w.pid for w in sockpool.current_cluster().workers]), flush=True)
        sockpool.par_map(time.sleep, [30, 30])
    """) as (master, pids):
        time.sleep(0.3)
        os.kill(master.pid, signum)
        master.wait(10)
        assert wait_gone(pids, 3) == []


# -- switching plans never changes a seeded result --------------------------------------

SAME_SCRIPT = """
    import json, random, sys
    import numpy as np
    import sockpool

    spec = sys.argv[1]
    remote = {"python": sys.executable} if spec.startswith("hosts:") else {}
    sockpool.plan(spec, seed=11, **remote)

    def draw(x):
        print(f"task {x} draws")
        return [x, random.random(), float(np.random.standard_normal()),
                float(sockpool.task_rng().random())]

    def fails(x):
        if x == 3:
            raise KeyError(x)
        return x * 10

    def nested(x):
        return sockpool.par_map(draw, range(x, x + 2), seed=x)

    out = {"call_seed": sockpool.par_map(draw, range(6), seed=2024),
           "root": sockpool.par_map(draw, range(4)),
           "submit": sockpool.submit(lambda: random.random()).result(),
           "imap": list(sockpool.imap(draw, range(3), seed=5)),
           "starmap": sockpool.par_starmap(lambda a, b: [a ** b, random.random()],
                                           [(2, 3), (3, 2)]),
           "errors": [repr(v) for v in sockpool.par_map(fails, range(5), errors="return")],
           "nested": sockpool.par_map(nested, [1, 4], seed=3)}
    try:
        sockpool.par_map(fails, range(5))
    except KeyError as exc:
        out["raised"] = [repr(exc), [note.split(" failed")[0] for note in exc.__notes__]]
    print(json.dumps(out))
"""


def _same_script_output(spec: str, tmp_path: Path) -> str:
    return run_script(SAME_SCRIPT, tmp_path, spec, timeout=90).stdout


def test_switching_between_sequential_and_local_keeps_every_seeded_result(
        tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    sequential = _same_script_output("sequential", tmp_path)
    assert "task 5 draws\n" in sequential
    assert json.loads(sequential.splitlines()[-1])["raised"] == ["KeyError(3)",
                                                                 ["sockpool: task 3"]]
    assert _same_script_output("local:2", tmp_path) == sequential


@pytest.mark.timeout(240)
def test_switching_to_two_ssh_hosts_keeps_every_seeded_result(
        namespace_hosts: Testbed, tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    try:
        hosts = "hosts:sp-n1,sp-n2"
        assert _same_script_output(hosts, tmp_path) == _same_script_output("sequential",
                                                                           tmp_path)
        example = [sys.executable, str(ROOT / "examples" / "one_switch.py")]
        runs = [subprocess.run([*example, spec], capture_output=True, text=True, timeout=90,
                               cwd="/", check=True).stdout.splitlines()
                for spec in ("sequential", hosts)]
        assert runs[0][:-1] == runs[1][:-1] and "chosen penalty" in "".join(runs[0])
    finally:
        deadline = time.monotonic() + 30
        while (left := namespace_hosts.remote_processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"left running on the test hosts: {[p.pid for p in left]}"


def test_the_oversubscription_warning_names_the_users_line_under_a_plan() -> None:
    threads = sockpool.detect_cores(logical=False)  # 2 workers x all cores: oversubscribed
    with (pytest.warns(UserWarning, match="threads on") as caught,
          sockpool.plan(n=2, threads_per_worker=threads)):
        assert sockpool.par_map(abs, [-1]) == [1]
    assert [Path(w.filename).name for w in caught if "threads on" in str(w.message)] == [
        Path(__file__).name]


def _on_the_given_cluster(x: int) -> bool:
    with sockpool.plan(_given[0]):  # the task chooses a plan itself: it is obeyed
        return sockpool.submit(os.getpid).result() != os.getpid()


_given: list[Cluster] = []


def test_a_plan_a_sequential_task_chooses_itself_is_obeyed() -> None:
    with Cluster(n=1) as cl:
        _given[:] = [cl]
        try:
            sockpool.plan("sequential")
            assert sockpool.par_map(_on_the_given_cluster, [0, 1]) == [True, True]
        finally:
            _given.clear()


def _library_fit(i: int) -> int:
    sockpool.plan("sequential")  # a library keeps its own inner loop in the process
    return sum(sockpool.par_map(_nested_abs, [-i, -1]))


def _nested_abs(x: int) -> int:
    return sockpool.par_map(abs, [x])[0]  # a task of the task's plan: nested once more


def _on_a_cluster_of_its_own(i: int) -> int:
    sockpool.plan(n=1)  # no with: the task's choice holds to its end
    return sockpool.submit(os.getpid).result()


@pytest.mark.parametrize("backend", ["sequential", "local:2"])
def test_a_plan_a_task_chooses_is_its_own_and_ends_with_it(backend: str) -> None:
    # Under the sequential plan the task's choice replaced the script's plan: its
    # seed was gone, and the next seeded call gave another stream on each run.
    pytest.importorskip("numpy")
    sockpool.plan("sequential", seed=2024)
    sockpool.par_map(_draws, range(3))
    sockpool.par_map(abs, range(2))
    expected = sockpool.par_map(_draws, range(3))  # the plan's third seeded call

    chosen = sockpool.plan(backend, seed=2024)
    sockpool.par_map(_draws, range(3))
    assert sockpool.par_map(_library_fit, range(2)) == [1, 2]
    assert sockpool.plan() is chosen
    assert sockpool.par_map(_draws, range(3)) == expected
    if backend == "sequential":
        pids = sockpool.par_map(_on_a_cluster_of_its_own, range(2))
        assert os.getpid() not in pids and len(set(pids)) == 2  # a cluster for each task
        assert wait_gone(pids, 10) == []  # ... closed when its task ended
        assert sockpool.plan() is chosen


@pytest.mark.parametrize("backend", ["sequential", "local:1"])
def test_a_plan_put_back_goes_on_counting_its_seeded_calls(backend: str) -> None:
    # A with that did nothing, or a closed cluster, restarted the count: the next
    # seeded call repeated the first one's streams.
    pytest.importorskip("numpy")
    sockpool.plan("sequential", seed=1)
    streams = [sockpool.par_map(_draws, range(3)) for _ in range(3)]
    assert len({str(s) for s in streams}) == 3

    sockpool.plan(backend, seed=1)
    assert sockpool.par_map(_draws, range(3)) == streams[0]
    with sockpool.plan("sequential"):  # a quick debugging block
        pass
    assert sockpool.par_map(_draws, range(3)) == streams[1]
    if backend != "sequential":
        with sockpool.current_cluster():  # the user closes the plan's cluster
            pass
    assert sockpool.par_map(_draws, range(3)) == streams[2]


def test_with_over_a_plan_made_before_puts_it_in_force_for_the_block() -> None:
    # The block ran under the plan in force instead (sequential, in this process),
    # and leaving it put the default plan in force.
    fast = sockpool.plan(n=1)
    sequential = sockpool.plan("sequential")
    for _ in range(2):
        with fast:
            assert sockpool.plan() is fast
            assert sockpool.par_map(lambda _: os.getpid(), range(2)) != [os.getpid()] * 2
        assert sockpool.plan() is sequential


def test_a_replaced_plan_is_let_go() -> None:
    # Each plan() held the plan it replaced, which held the one before: a program
    # (a test suite) choosing a plan again and again kept every plan ever made,
    # and what each held (a seed's state, a Cluster's options).
    first = sockpool.plan("sequential", seed=1)
    gone = weakref.ref(first)
    del first
    for _ in range(3):
        sockpool.plan("sequential")
    gc.collect()
    assert gone() is None
    with sockpool.plan("sequential", seed=2) as scoped:  # a with still puts back the last
        assert sockpool.plan() is scoped
    assert sockpool.plan() is not scoped and sockpool.plan().sequential


def _fails_leaving_work(i: int) -> None:
    sockpool.plan(n=1)
    sockpool.submit(time.sleep, 8)  # work on the task's own cluster
    raise ValueError("the task failed")


def _times_out_leaving_work(i: int) -> None:
    sockpool.plan(n=1)
    sockpool.submit(time.sleep, 8)
    time.sleep(30)


def test_a_task_that_fails_cancels_the_work_on_the_plan_it_chose() -> None:
    # Its plan's cluster was shut down waiting for that work: 6 s more for the
    # task's error, and a timeout= no longer bounded the task.
    sockpool.plan("sequential")
    for task, options, error in ((_fails_leaving_work, {}, ValueError),
                                 (_times_out_leaving_work, {"timeout": 1}, TaskTimeoutError)):
        started = time.monotonic()
        with pytest.raises(error):
            sockpool.par_map(task, [0], **options)
        assert time.monotonic() - started < 5.0


def _with_left_after_the_task(i: int) -> Iterator[int]:
    def numbers() -> Iterator[int]:
        with sockpool.plan("sequential", seed=7):  # entered in the task ...
            yield 1
            yield 2  # ... left once the task has ended

    started = numbers()
    next(started)
    return started


def test_a_with_a_task_entered_and_left_after_it_ended_leaves_the_script_plan() -> None:
    # Leaving it installed "no plan" as the script's: a sequential script became
    # the default local cluster.
    script = sockpool.plan("sequential", seed=1)
    numbers = sockpool.par_map(_with_left_after_the_task, [0])[0]
    assert list(numbers) == [2]
    assert sockpool.plan() is script


def test_a_plans_next_cluster_goes_on_from_a_seed_set_on_the_last() -> None:
    pytest.importorskip("numpy")
    sockpool.plan("sequential", seed=7)
    expected = [sockpool.par_map(_draws, range(2)) for _ in range(2)]

    sockpool.plan("local:1", seed=1)
    sockpool.par_map(_draws, range(2))
    sockpool.current_cluster().set_seed(7)
    assert sockpool.par_map(_draws, range(2)) == expected[0]
    with sockpool.current_cluster():  # closed: the plan's next cluster goes on from 7
        pass
    assert sockpool.par_map(_draws, range(2)) == expected[1]
