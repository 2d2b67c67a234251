"""Pickling on the master: the by-value check, task-function payloads and their digests.

The codec's :func:`~sockpool.common.codec.dumps` is what a worker runs;
the master's :func:`dumps` adds the check that no standard pickle names a
module a worker cannot import (see :mod:`.by_value`).  A task function
becomes a :class:`FunctionPayload` whose digest names it in the workers'
caches: a hash of the pickle, extended by a fast checksum of each large
captured buffer, which travels out of band and uncopied.
"""

from __future__ import annotations

import itertools
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from ..common import codec
from ..common.codec import Frames
from ..common.digest import function_digest
from ..common.naming import function_name
from .by_value import names_by_value_module


def dumps(obj: Any, serializer: str = "cloudpickle", *, copy_buffers: bool = False,
          prefix: bytes = b"", store: Callable[[list[Any]], Any] | None = None,
          standard_first: bool = True, global_ids: bool = False) -> Frames:
    """:func:`codec.dumps <sockpool.common.codec.dumps>` with the master's by-value check."""
    return codec.dumps(obj, serializer, copy_buffers=copy_buffers, prefix=prefix, store=store,
                       by_value_check=names_by_value_module, standard_first=standard_first,
                       global_ids=global_ids)


class FunctionPayload(NamedTuple):
    """A function pickled for the workers: in-band bytes, large buffers apart, its digest."""

    inband: bytes
    buffers: list[Any]
    digest: bytes
    name: str = ""  # the function's qualified name, for profiles
    #: With large buffers: which function this is a version of (see :func:`lineage`),
    #: so that a worker holding an older version, its captured data changed since,
    #: drops it when this one arrives.  0: none.
    lineage: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes on the wire."""
        return len(self.inband) + sum(memoryview(b).nbytes for b in self.buffers)


def dumps_function(obj: Any, serializer: str = "cloudpickle", *, copy_buffers: bool = False
                   ) -> tuple[FunctionPayload, bool]:
    """Pickle a task function; large captured buffers stay out of band, uncopied.

    Args:
        copy_buffers: copy the buffers now (the caller will not wait for the call).

    Returns:
        The payload, and whether the standard pickler wrote it (for a function:
        a reference by name, the same for as long as the function exists).
    """
    if serializer in ("cloudpickle", "pickle"):
        try:
            inband = codec.dumps_standard(obj)
        except Exception:
            if serializer == "pickle":
                raise
        else:
            if serializer == "pickle" or not names_by_value_module(inband):
                return FunctionPayload(inband, [], function_digest(inband, []),
                                       function_name(obj)), True
    # (The standard pickler failed, or wrote what the by-value check flags: not again.)
    frames = dumps(obj, serializer, copy_buffers=copy_buffers, global_ids=True,
                   standard_first=False)
    inband, buffers = bytes(frames[0]), frames[1:]
    return FunctionPayload(inband, buffers, function_digest(inband, buffers),
                           function_name(obj), lineage(obj) if buffers else 0), False


#: Each function's number, by the ids of what it is made of: weak references to them
#: (an id is reused once its object is freed) and the number.
_lineages: dict[tuple[int, ...], tuple[tuple[weakref.ref[Any], ...], int]] = {}
_lineages_lock = threading.Lock()
_next_lineage = itertools.count(1)


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
        try:  # (the entry goes with the first part to die, before its id is reused)
            refs = tuple(weakref.ref(part, _forgetter(key)) for part in parts)
        except TypeError:
            return 0
        number = next(_next_lineage)
        _lineages[key] = (refs, number)
        return number


def _forgetter(key: tuple[int, ...]) -> Callable[[weakref.ref[Any]], None]:
    def forget(_: weakref.ref[Any]) -> None:
        _lineages.pop(key, None)  # (no lock: it may run in any thread, at any moment)
    return forget
