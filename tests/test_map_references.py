"""A map's iterator lets go of each result once it has yielded it.

Mirrors CPython's ``ExecutorTest.test_free_reference`` (issue #14406): a caller that
streams large results through ``Executor.map`` or ``imap`` and drops each one must not
find them all kept alive by the iterator.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sockpool import Cluster

pytestmark = pytest.mark.timeout(60)


class Token:
    """A result that can be weakly referenced."""

    def __init__(self, index: int) -> None:
        self.index = index


def make_token(index: int) -> Token:
    return Token(index)


class Three(ValueError):
    """A task's error (a class of its own: builtin exceptions take no weak references)."""


def fails_at_three(index: int) -> Token:
    if index == 3:
        raise Three("three")
    return Token(index)


MAPS: dict[str, Callable[[Cluster, Any, int], Iterator[Any]]] = {
    "Executor.map": lambda cl, fn, n: cl.map(fn, range(n)),
    "Executor.map, chunks of 4": lambda cl, fn, n: cl.map(fn, range(n), chunksize=4),
    "imap": lambda cl, fn, n: cl.imap(fn, range(n)),
    "imap, unordered": lambda cl, fn, n: cl.imap(fn, range(n), ordered=False),
}


@pytest.mark.parametrize("kind", MAPS)
def test_a_yielded_result_dies_when_the_caller_drops_it(shared_cluster: Cluster,
                                                        kind: str) -> None:
    seen = []
    for token in MAPS[kind](shared_cluster, make_token, 10):
        seen.append(token.index)
        ref = weakref.ref(token)
        del token
        gc.collect()
        assert ref() is None, f"{kind} still holds result {seen[-1]}"
    assert sorted(seen) == list(range(10))


def test_returned_errors_are_let_go_too(shared_cluster: Cluster) -> None:
    results = shared_cluster.imap(fails_at_three, range(6), errors="return")
    kinds = []
    for value in results:
        kinds.append(type(value).__name__)
        ref = weakref.ref(value)
        del value
        gc.collect()
        assert ref() is None
    assert kinds == ["Token"] * 3 + ["Three"] + ["Token"] * 2


def test_par_map_keeps_every_result(shared_cluster: Cluster) -> None:
    tokens = shared_cluster.par_map(make_token, range(10))
    refs = [weakref.ref(t) for t in tokens]
    gc.collect()
    assert [r() for r in refs] == tokens
