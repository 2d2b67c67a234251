"""joblib's own backend tests (joblib/test/test_parallel.py), run against ``"sockpool"``.

joblib ships its tests in the installed package; nothing of them is copied
here.  Every test of that module parametrized by ``backend`` is taken as it
is, its ``backend`` values replaced by ``"sockpool"`` (for a combined
parametrization such as ``"backend, error"``, loky's cases, with the backend
renamed), and run on one shared two-worker cluster.  The tests that do not
apply to a backend on a cluster are listed in ``NOT_APPLICABLE`` with why.
"""

from __future__ import annotations

import gc
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

test_parallel = pytest.importorskip("joblib.test.test_parallel")

import joblib.parallel  # noqa: E402

import sockpool.joblib  # noqa: E402
from sockpool import Cluster  # noqa: E402

pytestmark = pytest.mark.timeout(60)

#: Tests that check something only joblib's own backends have, and why.
NOT_APPLICABLE = {
    "test_background_thread_parallelism":
        "ignores its backend parameter: it runs loky (whose workers outlive the test)",
    "test_error_capture":
        "expects a task's KeyboardInterrupt raised as such and loky's pool (_workers) "
        "replaced; sockpool never lets a task's KeyboardInterrupt stop the master (it "
        "arrives as RemoteError) and keeps its cluster",
    "test_nested_backend_context_manager":
        "expects threads for nested calls; in a sockpool task they run sequentially "
        "(DESIGN.md: inside a task the plan is sequential; no oversubscribed workers)",
    "test_nested_parallelism_limit": "as test_nested_backend_context_manager",
    "test_parallel_with_interactively_defined_functions":
        "runs a fresh interpreter that has not imported sockpool.joblib; the same cases "
        "(functions, lambdas, closures of __main__) are in test_joblib_backend.py",
    "test_parallel_with_unpicklable_functions_in_args":
        "as test_parallel_with_interactively_defined_functions",
    "test_auto_memmap_on_arrays_from_generator":
        "checks joblib's memmapping of large arrays (np.memmap in loky workers); "
        "sockpool passes them through shared memory as plain arrays",
    "test_memmapping_leaks": "as test_auto_memmap_on_arrays_from_generator",
}

#: For a combined parametrization, the backend whose cases sockpool's expectations
#: match (default: loky's).  Separate Parallel calls do not share an executor that
#: a collected generator shuts down, as loky's do: threading's expectation.
CASES_OF = {"test_multiple_generator_call_separated_gc": "threading"}


def _argnames(mark: Any) -> list[str]:
    names = mark.args[0]
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def _as_sockpool(mark: Any, peer: str) -> Any:
    """A parametrize mark with its backend values replaced by "sockpool"."""
    names = _argnames(mark)
    if "backend" not in names:
        return mark
    if names == ["backend"]:
        return pytest.mark.parametrize("backend", ["sockpool"])
    at = names.index("backend")
    cases = []
    for case in mark.args[1]:
        values = list(case.values if hasattr(case, "values") else case)
        if values[at] == peer:
            values[at] = "sockpool"
            cases.append(tuple(values))
    return pytest.mark.parametrize(",".join(names), cases)


def _adapted(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    marks = getattr(fn, "pytestmark", [])
    if not any(m.name == "parametrize" and "backend" in _argnames(m) for m in marks):
        return None
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__dict__.update(fn.__dict__)
    copy.__qualname__ = fn.__qualname__
    peer = CASES_OF.get(fn.__name__, "loky")
    new_marks = [_as_sockpool(m, peer) if m.name == "parametrize" else m for m in marks]
    if fn.__name__ in NOT_APPLICABLE:
        new_marks.append(pytest.mark.skip(reason=NOT_APPLICABLE[fn.__name__]))
    copy.pytestmark = new_marks  # type: ignore[attr-defined]
    return copy


for _name, _fn in list(vars(test_parallel).items()):
    if _name.startswith("test_") and isinstance(_fn, types.FunctionType):
        _test = _adapted(_fn)
        if _test is not None:
            globals()[_name] = _test


@pytest.fixture(scope="module", autouse=True)
def sockpool_backend_on_a_shared_cluster() -> Iterator[Cluster]:
    """``backend="sockpool"`` means a backend on one two-worker cluster for the module."""
    with Cluster(n=2) as cl:

        class SockpoolBackend(sockpool.joblib.SockpoolBackend):
            # Named as the real one: some tests check the active backend's class name.
            def __init__(self, cluster: Cluster | None = None, **kwargs: Any) -> None:
                super().__init__(cluster=cluster or cl, **kwargs)

        joblib.parallel.register_parallel_backend("sockpool", SockpoolBackend)
        try:
            yield cl
        finally:
            joblib.parallel.register_parallel_backend("sockpool", sockpool.joblib.SockpoolBackend)


@pytest.fixture(autouse=True)
def shut_down_managers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ``multiprocessing.Manager()`` a test starts (the initializer tests' status
    dict) is shut down as it ends: joblib's tests leave its process to the collector."""
    started: list[Any] = []
    manager = test_parallel.mp.Manager

    def tracked(*args: Any, **kwargs: Any) -> Any:
        started.append(manager(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(test_parallel.mp, "Manager", tracked)
    yield
    for each in started:
        each.shutdown()


@pytest.fixture(autouse=True)
def collect_abandoned_generators() -> Iterator[None]:
    """A generator a test leaves in a reference cycle is aborted now, not in a later test.

    (joblib's generators cancel their tasks when collected; on the shared
    cluster, a later test would otherwise wait behind them.)
    """
    yield
    gc.collect()
