"""CPython's own ``multiprocessing.Pool`` tests (``Lib/test/_test_multiprocessing.py``),
run against ``sockpool.Pool``.

Nothing of CPython's source is copied here: the test classes are imported from the
running interpreter's standard test package.  Their names and bodies change between
CPython versions, so this module runs them on 3.11, the README command's Python, and
is skipped elsewhere, saying so.

``_TestPool``, ``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime`` and
``TestInitializers.test_pool_initializer`` run with ``sockpool.Pool`` wherever they
make a pool: ``self.Pool``, and ``multiprocessing.Pool`` as the test module sees it.
Everything else they use (``Manager``, ``Event``, ``TimeoutError``...) stays
multiprocessing's.  What reads multiprocessing's internals is skipped with its reason
(:data:`NOT_APPLICABLE`); where sockpool deliberately answers otherwise, the reason
says what it does instead and which of our tests asserts that (:data:`DIFFERENT`).
``TestPoolNotLeakOnFailure`` is left out: it hands a fake ``Process`` class in through
``context=``, which ``sockpool.Pool`` refuses.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import sys
import types
import unittest
from collections.abc import Iterator
from typing import Any

import pytest

import sockpool

if sys.version_info[:2] != (3, 11):
    pytest.skip("CPython's Pool tests change between versions; they run on 3.11, the "
                "README command's Python", allow_module_level=True)
tm = pytest.importorskip("test._test_multiprocessing",
                         reason="this interpreter has no CPython test package")
script_helper = pytest.importorskip("test.support.script_helper")

pytestmark = [pytest.mark.timeout(120),
              # Pool(4) on a 2-core machine: sockpool says so, multiprocessing does not.
              pytest.mark.filterwarnings("ignore:.*usable physical cores:UserWarning")]

NOT_APPLICABLE = {
    "test_make_pool": "reads pool._pool, multiprocessing's list of Process objects "
                      "(the refusals of Pool(-1) and Pool(0): test_mp_pool's "
                      "test_bad_arguments_fail_before_any_worker_starts)",
    "test_pool_worker_lifetime": "reads pool._pool and calls _repopulate_pool() "
                                 "(maxtasksperchild: test_mp_pool's "
                                 "test_maxtasksperchild_replaces_workers)",
    "test_resource_warning": "sets the private _state back to RUN after terminate() "
                             "(a pool dropped while running warns: test_mp_pool's "
                             "test_a_pool_dropped_while_running_warns_and_ends_its_workers)",
    "test_worker_finalization_via_atexit_handler_of_multiprocessing":
        "its script imports multiprocessing's Pool in a subprocess; the same script "
        "with sockpool's runs below",
}

DIFFERENT = {
    "test_imap_handle_iterable_exception":
        "an input that raises: sockpool yields the result of every item read before "
        "it, then raises, where multiprocessing drops that chunk's results "
        "(docs/one-switch.md; test_mp_pool's "
        "test_imap_gives_what_came_before_an_input_that_fails_then_its_error)",
    "test_traceback": "the cause is sockpool.errors.RemoteTraceback, not "
                      "multiprocessing.pool.RemoteTraceback; its tb holds the source line "
                      "(test_mp_pool's test_the_workers_traceback_is_the_cause_with_its_"
                      "source_lines)",
    "test_unpickleable_result": "its result is a lambda, which sockpool sends by value: "
                                "it arrives, where multiprocessing raises "
                                "MaybeEncodingError",
}


def _skip(reason: str) -> Any:
    def skipped(self: unittest.TestCase) -> None:
        self.skipTest(reason)
    return skipped


class _Skips(type):
    """Replaces the inherited tests named in NOT_APPLICABLE and DIFFERENT by skips."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        cls = super().__new__(mcs, name, bases, namespace)
        for test, reason in {**NOT_APPLICABLE, **DIFFERENT}.items():
            if hasattr(cls, test):
                setattr(cls, test, _skip(reason))
        return cls


class _PoolModule(types.ModuleType):
    """``multiprocessing.pool`` as the tests see it, its Pool sockpool's."""

    Pool = staticmethod(sockpool.Pool)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing.pool, name)


class _Multiprocessing(types.ModuleType):
    """``multiprocessing`` as the tests see it, its Pool sockpool's."""

    Pool = staticmethod(sockpool.Pool)
    pool = _PoolModule("multiprocessing.pool")

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


@pytest.fixture(scope="module", autouse=True)
def _sockpool_pool_in_the_tests() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tm, "multiprocessing", _Multiprocessing("multiprocessing"))
        yield


class _SockpoolPool(tm.ProcessesMixin):
    Pool = staticmethod(sockpool.Pool)


class TestPool(tm._TestPool, _SockpoolPool, unittest.TestCase, metaclass=_Skips):
    # Task functions of CPython's class, which travel by reference.  This module's
    # classes are local, so sockpool would send them by value, with the class
    # attributes the test harness hangs on them (the class's pool among them).
    _test_traceback = staticmethod(tm._TestPool._test_traceback)
    _test_wrapped_exception = staticmethod(tm._TestPool._test_wrapped_exception)


class TestPoolWorkerErrors(tm._TestPoolWorkerErrors, _SockpoolPool, unittest.TestCase,
                           metaclass=_Skips):
    pass


class TestPoolWorkerLifetime(tm._TestPoolWorkerLifetime, _SockpoolPool, unittest.TestCase,
                             metaclass=_Skips):

    def test_worker_finalization_via_atexit_handler_of_sockpool(self) -> None:
        # CPython's script, with the port's one change: the import.
        script = """if 1:
            from sockpool import Pool
            problem = None
            class A:
                def __init__(self):
                    self.pool = Pool(processes=1)
            def test():
                global problem
                problem = A()
                problem.pool.map(float, tuple(range(10)))
            if __name__ == "__main__":
                test()
        """
        rc, _out, err = script_helper.assert_python_ok("-c", script)
        self.assertEqual(rc, 0)
        self.assertNotIn(b"Traceback", err)


class TestInitializers(tm.TestInitializers, metaclass=_Skips):
    test_manager_initializer = _skip("a manager's initializer, not a Pool's")
