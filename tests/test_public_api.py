"""The public surface: exactly what DESIGN.md promises, documented and typed."""

from __future__ import annotations

import inspect

import pytest

import sockpool

pytestmark = pytest.mark.timeout(60)

DESIGN_NAMES = {"Cluster", "detect_cores", "SockpoolError", "CaptureError", "WorkerLostError",
                "TaskTimeoutError", "LaunchError", "ClusterClosedError", "RemoteError"}


def test_all_is_sorted_and_complete() -> None:
    assert list(sockpool.__all__) == sorted(sockpool.__all__)
    assert set(sockpool.__all__) >= DESIGN_NAMES
    for name in sockpool.__all__:
        assert getattr(sockpool, name) is not None
    assert set(sockpool.__all__) <= set(dir(sockpool))
    # (completion in a notebook lists the API, not the package's own imports)
    assert not {"Any", "importlib", "TYPE_CHECKING", "annotations"} & set(dir(sockpool))
    assert "errors" in dir(sockpool) and "__version__" in dir(sockpool)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        sockpool.no_such_thing  # noqa: B018


def test_error_hierarchy() -> None:
    assert issubclass(sockpool.ClusterClosedError, RuntimeError)
    assert issubclass(sockpool.TaskTimeoutError, TimeoutError)
    import pickle

    assert issubclass(sockpool.CaptureError, pickle.PicklingError)
    for name in DESIGN_NAMES - {"Cluster", "detect_cores"}:
        assert issubclass(getattr(sockpool, name), sockpool.SockpoolError)


def test_errors_survive_pickling_with_their_attributes() -> None:
    import pickle

    lost = sockpool.WorkerLostError("gone", worker_id=3, host="h", pid=9, exit_status="SIGKILL",
                                    stderr_tail="tail")
    again = pickle.loads(pickle.dumps(lost))
    assert (str(again), again.worker_id, again.exit_status, again.stderr_tail) == (
        "gone", 3, "SIGKILL", "tail")
    remote = pickle.loads(pickle.dumps(sockpool.RemoteError("T", "msg", "tb")))
    assert (remote.type_name, remote.message, remote.traceback_text) == ("T", "msg", "tb")
    timed = pickle.loads(pickle.dumps(sockpool.TaskTimeoutError(
        "late", timeout=0.5, worker_id=1, host="h", pid=9, stack="Stack")))
    assert (str(timed), timed.timeout, timed.worker_id, timed.host, timed.pid, timed.stack) == (
        "late", 0.5, 1, "h", 9, "Stack")
    assert str(sockpool.TaskTimeoutError()) == ""  # (raised bare, as a TimeoutError may be)


def test_everything_public_is_documented_and_typed() -> None:
    cluster = sockpool.Cluster
    public = [getattr(cluster, n) for n in dir(cluster) if not n.startswith("_")]
    for obj in [getattr(sockpool, n) for n in sockpool.__all__ if n != "__version__"] + public:
        if callable(obj) or isinstance(obj, property):
            assert inspect.getdoc(obj), f"{obj!r} has no docstring"
    for name in ("par_map", "par_starmap", "imap", "submit", "map", "run_on_all", "export",
                 "shutdown", "close"):
        signature = inspect.signature(getattr(cluster, name))
        assert signature.return_annotation is not inspect.Signature.empty, name


def test_par_map_signature_matches_the_design() -> None:
    params = inspect.signature(sockpool.Cluster.par_map).parameters
    assert list(params)[:3] == ["self", "fn", "iterables"]
    for name, default in (("chunksize", None), ("ordered", True), ("progress", False),
                          ("timeout", None), ("retries", 0), ("errors", "raise")):
        assert params[name].default == default
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
