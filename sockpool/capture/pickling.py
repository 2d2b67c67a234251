"""Pickling on the master: the by-value check, task-function payloads and their digests.

The codec's :func:`~sockpool.common.codec.dumps` is what a worker runs;
the master's :func:`dumps` adds the check that no standard pickle names a
module a worker cannot import (see :mod:`.by_value`).  A task function
becomes a :class:`FunctionPayload` whose digest names it in the workers'
caches: a hash of the pickle, extended by a fast checksum of each large
captured buffer, which travels out of band and uncopied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..common import codec
from ..common.codec import Frames
from ..common.digest import buffer_digest, function_digest
from ..common.naming import function_name
from .by_value import names_by_value_module
from .lineage import Pin, definition_site, lineage


def dumps(obj: Any, serializer: str = "cloudpickle", *, copy_buffers: bool = False,
          prefix: bytes = b"", store: Callable[[list[Any]], list[Any]] | None = None,
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
    #: With large buffers: which function this is a version of, and where it was
    #: defined (see :mod:`.lineage`), so that a worker holding an older version
    #: drops it when this one arrives.  0: none.
    lineage: int = 0
    site: int = 0
    #: With a lineage: a use of it, which a job holding this payload keeps alive.
    pin: Pin | None = None
    #: Each large buffer's own digest, by which a worker that holds it is sent the
    #: digest in its place (see ``FunctionMirror.frames``).
    buffer_digests: tuple[bytes, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes on the wire."""
        return len(self.inband) + sum(memoryview(b).nbytes for b in self.buffers)


def _as_bytes(view: memoryview) -> bytes:
    """A pickle's bytes: the object the view is of, where it is all of one (not copied:
    a function carrying many small arrays pickles to many MB)."""
    whole = view.obj
    return whole if type(whole) is bytes and len(whole) == view.nbytes else bytes(view)


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
        large: list[Any] = []  # (out of band: a partial over a large array, say)
        try:
            inband = codec.dumps_standard(obj, large)
        except Exception:
            if serializer == "pickle":
                raise
        else:
            if serializer == "pickle" or not names_by_value_module(inband):
                if large:
                    buffers = [bytes(b.raw()) for b in large] if copy_buffers else large
                    return _with_buffers(obj, inband, buffers), False
                return FunctionPayload(inband, [], function_digest(inband, []),
                                       function_name(obj)), True
    # (The standard pickler failed, or wrote what the by-value check flags: not again.)
    frames = dumps(obj, serializer, copy_buffers=copy_buffers, global_ids=True,
                   standard_first=False)
    inband, buffers = _as_bytes(frames[0]), frames[1:]
    if not buffers:
        return FunctionPayload(inband, buffers, function_digest(inband, buffers),
                               function_name(obj)), False
    return _with_buffers(obj, inband, buffers), False


def _with_buffers(obj: Any, inband: bytes, buffers: list[Any]) -> FunctionPayload:
    """The payload of a function that carries large buffers: a version of its lineage."""
    number = lineage(obj)
    digests = tuple(buffer_digest(buffer) for buffer in buffers)
    return FunctionPayload(inband, buffers, function_digest(inband, buffers, digests),
                           function_name(obj), number, definition_site(obj),
                           Pin(number) if number else None, digests)
