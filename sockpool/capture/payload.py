"""Turning the user's function and arguments into payloads, with errors that say what failed.

cloudpickle already ships a function by value with exactly what it needs:
closure cells, the globals its code names (recursively through the functions
it calls), classes defined in ``__main__``.  Modules travel by reference,
except *local* ones (a ``.py`` next to the user's script, not installed),
which are registered to travel by value before anything is pickled (see
:mod:`.by_value`).  Everything is pickled before anything is sent; a failure
becomes a :class:`~sockpool.errors.CaptureError` naming the path to the
culprit (``worker -> fit_one -> conn: sqlite3.Connection``).

A :class:`Packer` holds the caller's choices (the serializer, the limit on
what a function may carry), so that the caller's side holds one object
instead of passing them along; the ``dump_*`` functions take the choices at
each call, for the callers that do not hold one yet.
"""

from __future__ import annotations

import itertools
import types
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..common import codec
from ..common.codec import Frames
from ..common.proc import format_bytes
from ..errors import CaptureError
from . import pickling
from .by_value import register_local_modules
from .fingerprint import fingerprint, same
from .inspection import describe_unpicklable, inspect_capture
from .limits import DEFAULT_MAX_CAPTURE_SIZE, check_max_capture_size
from .pickling import FunctionPayload
from .scripts import definition_of, note_function

#: Copies large buffers into shared memory; returns the frames that name them.
Store = Callable[[list[Any]], list[Any]]


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


#: Payloads of functions pickled by reference (a name, not a value), by id.
#: Re-pickling ``abs`` for every ``submit`` costs more than the rest of the call.
_reference_payloads: dict[int, tuple[Callable[..., Any], str, FunctionPayload]] = {}
_REFERENCE_CACHE_SIZE = 512
#: Payloads of functions pickled by value whose pickle a fingerprint vouches for
#: (see :mod:`.fingerprint`): the serializer, fingerprint and payload, as long as
#: the function lives (a lambda made for each call keeps nothing alive).
_value_payloads: weakref.WeakKeyDictionary[
    Callable[..., Any], tuple[str, tuple[Any, ...], FunctionPayload]] = (
        weakref.WeakKeyDictionary())
#: ... if no larger than this (one that carries a large string would keep it alive).
_KEPT_PAYLOAD_BYTES = 16 * 1024


def _of_the_script(fn: Any) -> bool:
    """Whether a callable is defined in ``__main__`` (a partial's function, a bound
    method's, a callable object's class): the standard pickler names it there."""
    return getattr(definition_of(fn), "__module__", None) == "__main__"


@dataclass(frozen=True)
class Packer:
    """How the caller's side pickles functions and values for the workers.

    Attributes:
        serializer: ``"cloudpickle"``, ``"dill"`` or ``"pickle"``.
        max_capture_size: bytes a task function may carry, or None for no limit.

    Raises:
        ValueError: an unknown serializer, or a limit that is not a positive int.
    """

    serializer: str = "cloudpickle"
    max_capture_size: int | None = DEFAULT_MAX_CAPTURE_SIZE

    def __post_init__(self) -> None:
        codec.check_serializer(self.serializer)
        check_max_capture_size(self.max_capture_size)

    def function(self, fn: Callable[..., Any], copy_buffers: bool = False) -> FunctionPayload:
        """Serialize a task function (cached by digest on the workers).

        A function shipped by value is pickled anew at every call, so each call
        sees the globals it refers to as they are then (unless it is made of the
        same immutable objects as last time: see :mod:`.fingerprint`); large
        captured buffers are not copied (unless ``copy_buffers``), only checksummed.

        Raises:
            CaptureError: the function, or something it refers to, cannot be
                serialized (the message names the path to it), or it carries
                more than ``max_capture_size``.
        """
        serializer = self.serializer
        cached = _reference_payloads.get(id(fn))
        if cached is not None and cached[0] is fn and cached[1] == serializer:
            return cached[2]
        if serializer == "pickle" and _of_the_script(fn):
            raise CaptureError(
                f"cannot send the function {_name_of(fn)!r} with serializer='pickle': it "
                "sends a function or class by its name, and a worker's __main__ is not "
                "your script, so it has no such name; define it in a module that your "
                "script imports, or use the default serializer (cloudpickle)")
        register_local_modules(serializer)
        note_function(fn)
        known = fingerprint(fn) if serializer == "cloudpickle" else None
        kept = _value_payloads.get(fn) if known is not None else None
        if kept is not None and kept[0] == serializer and same(kept[1], known):  # type: ignore[arg-type]
            payload = kept[2]
            if self.max_capture_size is not None and payload.nbytes > self.max_capture_size:
                raise self._too_big(fn, payload.nbytes, self.max_capture_size)
            return payload
        try:
            payload, by_reference = pickling.dumps_function(fn, serializer,
                                                            copy_buffers=copy_buffers)
        except Exception as exc:
            where = describe_unpicklable(fn, getattr(fn, "__name__", "the function"), serializer)
            raise CaptureError(
                f"cannot serialize the function {_name_of(fn)!r} for the workers: "
                + (where or f"{type(exc).__name__}: {exc}")) from exc
        limit = self.max_capture_size
        if limit is not None and payload.nbytes > limit:
            raise self._too_big(fn, payload.nbytes, limit)
        # Only plain functions: a partial or a bound method also carries values.
        if by_reference and isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
            if len(_reference_payloads) >= _REFERENCE_CACHE_SIZE:
                _reference_payloads.clear()
            _reference_payloads[id(fn)] = (fn, serializer, payload)
        elif known is not None and payload.nbytes <= _KEPT_PAYLOAD_BYTES and payload.pin is None:
            after = fingerprint(fn)  # (another thread may have rebound a global meanwhile)
            if after is not None and same(known, after):
                _value_payloads[fn] = (serializer, known, payload)
        return payload

    def _too_big(self, fn: Any, size: int, limit: int) -> CaptureError:
        report = inspect_capture(fn, self.serializer)
        biggest = ", ".join(f"{e.name} ({e.type}, {format_bytes(e.nbytes)})"
                            for e in report.biggest(3))
        return CaptureError(
            f"the function {_name_of(fn)!r} carries {format_bytes(size)}, more than the limit "
            f"of {format_bytes(limit)} ({limit} bytes); the biggest: {biggest}.  If that is "
            "intended, raise the limit with Cluster(max_capture_size=...) (None for no limit); "
            "otherwise pass the data as an argument, or send it once with export() under a "
            "name that is not a global here (cl.export(BIG=data), or del BIG after exporting "
            "it): a function carries each global it names.")

    def values(self, obj: Any, parts: Iterable[tuple[str, Any]], *,
               copy_buffers: bool = False, prefix: bytes = b"", store: Store | None = None,
               standard_first: bool = True) -> Frames:
        """Serialize ``obj`` into frames; on failure, name the first of ``parts`` that fails.

        Args:
            obj: what to serialize (a chunk's items, a call's arguments, exports).
            parts: ``(description, value)`` pairs that make up ``obj``, tried one by
                one only when ``obj`` fails, to say which one is to blame.
            copy_buffers: copy large buffers now (the caller may change them).
            prefix: bytes before the pickle in the first frame (a header).
            store: shared memory for large buffers (see ``codec.dumps``).
            standard_first: see ``codec.dumps``.

        Raises:
            CaptureError: naming the part, the path inside it and the pickler's complaint.
        """
        serializer = self.serializer
        register_local_modules(serializer)
        try:
            # (global_ids: a worker tells a global the master bound anew, see
            # worker/namespaces.py, for a function among arguments or exports too)
            return pickling.dumps(obj, serializer, copy_buffers=copy_buffers, prefix=prefix,
                                  store=store, standard_first=standard_first, global_ids=True)
        except Exception as exc:
            for what, part in parts:
                where = describe_unpicklable(part, what, serializer)
                if where is not None:
                    raise CaptureError(f"cannot serialize {where}") from exc
            raise CaptureError(f"cannot serialize a value: {type(exc).__name__}: {exc}") from exc

    def arguments(self, items: Sequence[Any], first_index: int, *, copy_buffers: bool = False,
                  store: Store | None = None) -> Frames:
        """Serialize a chunk's argument items (CaptureError names the first bad index)."""
        parts = ((f"argument {first_index + i}", item) for i, item in enumerate(items))
        return self.values(items, parts, copy_buffers=copy_buffers, store=store)

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any], store: Store | None = None,
             standard_first: bool = True) -> Frames:
        """Serialize one call's ``(args, kwargs)``, copying buffers (the caller may reuse
        them); ``standard_first``: see ``codec.dumps``."""
        # Named only if the call fails to serialize: 2 µs of every submit otherwise.
        parts = itertools.chain(((f"positional argument {i}", a) for i, a in enumerate(args)),
                                ((f"keyword argument {k!r}", v) for k, v in kwargs.items()))
        return self.values((args, kwargs), parts, copy_buffers=True, store=store,
                           standard_first=standard_first)
