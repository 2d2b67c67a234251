"""Turning the user's function and arguments into payloads, with errors that say what failed.

cloudpickle already ships a function by value with exactly what it needs:
closure cells, the globals its code names (recursively through the functions
it calls), classes defined in ``__main__``; importable modules travel by
reference.  This module runs it before anything is sent and turns a failure
into a :class:`~sockpool.errors.CaptureError` that names the culprit.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import serialization
from .errors import CaptureError


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


#: Payloads of functions pickled by reference (a name, not a value), by id.
#: Re-pickling ``abs`` for every ``submit`` costs more than the rest of the call.
_reference_payloads: dict[int, tuple[Callable[..., Any], str, bytes]] = {}
_REFERENCE_CACHE_SIZE = 512


def dump_function(fn: Callable[..., Any], serializer: str) -> bytes:
    """Serialize a task function into one payload (cached by digest on the workers).

    A function shipped by value is pickled anew at every call, so each call
    sees the globals it refers to as they are then.

    Raises:
        CaptureError: the function, or something it refers to, cannot be serialized.
    """
    cached = _reference_payloads.get(id(fn))
    if cached is not None and cached[0] is fn and cached[1] == serializer:
        return cached[2]
    try:
        payload, by_reference = serialization.dumps_in_band(fn, serializer)
    except Exception as exc:
        raise CaptureError(
            f"cannot serialize the function {_name_of(fn)!r} for the workers: "
            f"{type(exc).__name__}: {exc}") from exc
    # Only plain functions: a partial or a bound method also carries values.
    if by_reference and isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
        if len(_reference_payloads) >= _REFERENCE_CACHE_SIZE:
            _reference_payloads.clear()
        _reference_payloads[id(fn)] = (fn, serializer, payload)
    return payload


def dump_values(obj: Any, serializer: str, parts: Iterable[tuple[str, Any]], *,
                copy_buffers: bool = False, prefix: bytes = b"") -> list[Any]:
    """Serialize ``obj`` into frames; on failure, name the first of ``parts`` that fails.

    Args:
        obj: what to serialize (a chunk's items, a call's arguments, exports).
        parts: ``(description, value)`` pairs that make up ``obj``, tried one by
            one only when ``obj`` fails, to say which one is to blame.

    Raises:
        CaptureError: naming the part, its type and the pickler's complaint.
    """
    try:
        return serialization.dumps(obj, serializer, copy_buffers=copy_buffers, prefix=prefix)
    except Exception as exc:
        culprit, value, error = "a value", obj, exc
        for what, part in parts:
            try:
                serialization.dumps(part, serializer)
            except Exception as part_error:
                culprit, value, error = what, part, part_error
                break
        raise CaptureError(
            f"{culprit} (a {serialization.describe(value)}) cannot be serialized: "
            f"{type(error).__name__}: {error}") from error


def dump_arguments(items: Sequence[Any], first_index: int, serializer: str, *,
                   copy_buffers: bool = False) -> list[Any]:
    """Serialize a chunk's argument items (CaptureError names the first bad index)."""
    parts = ((f"argument {first_index + i}", item) for i, item in enumerate(items))
    return dump_values(items, serializer, parts, copy_buffers=copy_buffers)


def dump_call(args: tuple[Any, ...], kwargs: dict[str, Any], serializer: str) -> list[Any]:
    """Serialize one call's ``(args, kwargs)``, copying buffers (the caller may reuse them)."""
    parts = [*((f"positional argument {i}", a) for i, a in enumerate(args)),
             *((f"keyword argument {k!r}", v) for k, v in kwargs.items())]
    return dump_values((args, kwargs), serializer, parts, copy_buffers=True)
