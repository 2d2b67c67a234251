"""Which function a payload with large captured data is a version of.

A worker caches each function payload it is sent (512 MiB of them), and a
payload that carries a large captured array holds its copy there.  Two kinds
of payload will never run again, and the master tells workers to drop them as
soon as a newer version arrives: one of the same function whose captured data
changed since (the same :func:`lineage`), and one of a function defined at the
same place (the same :func:`definition_site`) that no longer exists here -- the
lambda of an earlier map, a function defined again as a notebook cell runs again
(unchanged: ipykernel names a cell's file by its text).
A payload in use counts as its function (:class:`Pin`, ``FunctionPayload.pin``):
a job in flight keeps its lineage alive though the function is gone, without
keeping the function, whose data the payload may hold a copy of already.
"""

from __future__ import annotations

import functools
import itertools
import types
import weakref
from collections.abc import Callable
from typing import Any

from ..common.forking import fork_safe_lock

#: Each function's number, by the ids of what it is made of: weak references to them
#: (an id is reused once its object is freed) and the number.
_lineages: dict[tuple[int, ...], tuple[tuple[weakref.ref[Any], ...], int]] = {}
_lineages_lock = fork_safe_lock()
_next_lineage = itertools.count(1)
_alive: set[int] = set()  # the numbers of the functions that still exist


class Pin:
    """A use of the function numbered ``number`` that counts as it, while it lives."""

    __slots__ = ("__weakref__", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        key = id(self)  # (its entry goes as it dies, before its id can be reused)
        with _lineages_lock:
            uses = _pins.setdefault(number, {})
            uses[key] = weakref.ref(self, lambda _: uses.pop(key, None))


#: The live pins of each function's number, by their ids.
_pins: dict[int, dict[int, weakref.ref[Pin]]] = {}


def lineage(fn: Any) -> int:
    """A number for the function ``fn`` that no other function ever gets, by
    identity: two lambdas passed in turn share an ``id()`` but not a number, and
    ``model.predict`` (a new bound method each time) keeps its number while the
    model and its method live.  0 for what cannot be weakly referenced."""
    parts = (fn.__self__, fn.__func__) if isinstance(fn, types.MethodType) else (fn,)
    key = tuple(map(id, parts))
    with _lineages_lock:
        known = _lineages.get(key)
        if known is not None and all(ref() is part for ref, part in
                                     zip(known[0], parts, strict=True)):
            return known[1]
        number = next(_next_lineage)
        try:  # (the entry goes with the first part to die, before its id is reused)
            refs = tuple(weakref.ref(part, _forgetter(key, number)) for part in parts)
        except TypeError:
            return 0
        _lineages[key] = (refs, number)
        _alive.add(number)
        return number


def lineage_alive(number: int) -> bool:
    """Whether the function numbered ``number`` by :func:`lineage` still exists here,
    or a :class:`Pin` of it."""
    if number in _alive:
        return True
    with _lineages_lock:
        if _pins.get(number):
            return True
        _pins.pop(number, None)  # (none left: a new one would make its entry anew)
        return False


def _forgetter(key: tuple[int, ...], number: int) -> Callable[[weakref.ref[Any]], None]:
    def forget(_: weakref.ref[Any]) -> None:
        # (no lock: it may run in any thread, at any moment)
        _alive.discard(number)
        if (known := _lineages.get(key)) is not None and known[1] == number:
            del _lineages[key]
    return forget


def definition_site(fn: Any) -> int:
    """A number for where ``fn`` was defined: its code's file, first line and name
    (a partial's or a bound method's function's), or a callable object's class."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        where: tuple[Any, ...] = (code.co_filename, code.co_firstlineno,
                                  getattr(fn, "__qualname__", code.co_name))
    else:
        where = (type(fn).__module__, type(fn).__qualname__)
    return hash(where) or 1
