"""Whether a function shipped by value would pickle as it did last time, told without pickling it.

A function from ``__main__`` or a notebook is pickled anew at every call, so
that each call sends the globals it names as they are then (:mod:`.payload`).
For ``submit`` of a small function that is most of the caller's cost: 30 µs of
cloudpickle where the rest of the call takes a few.  Yet most such functions
name nothing that can change unseen.  A *fingerprint* lists everything the
pickle is made of (code, defaults, closure cells, the globals the code names,
present or not, and how many modules are loaded, which decides what travels by
value), and a call whose fingerprint holds the same objects pickles to the same
bytes.  It exists only where each of those objects is immutable or travels by
reference: numbers, strings, bytes, None, tuples and frozensets of them,
importable modules, classes and functions.  Anything else (a list, an array, a
function of ``__main__``, a function attribute, a ``bind_to_env`` function,
whose whole namespace travels) and there is no fingerprint: the function is
pickled, as before.  (A module loaded as another is dropped leaves the count
as it was: a fingerprint does not see that.)
"""

from __future__ import annotations

import sys
import types
from typing import Any

_ATOMS = (int, float, complex, str, bytes, bool, type(None), type(Ellipsis), range)
_MISSING = object()  # a global the code names that the function's module lacks
_EMPTY_CELL = object()
_NEXT = object()  # between the parts: a name cannot move from one to the next unseen


class _Unseen(Exception):
    """Something in the function could change without a new identity."""


def fingerprint(fn: Any) -> tuple[Any, ...] | None:
    """The objects ``fn``'s pickle is made of, or None where one of them is mutable
    (or travels by value): compare two with :func:`same`."""
    if (type(fn) is not types.FunctionType or fn.__dict__
            or type(fn.__globals__) is not dict):  # (a bind_to_env namespace travels whole)
        return None
    from cloudpickle import cloudpickle

    # (The count of modules first: compared by value, the rest by identity.)
    parts: list[Any] = [len(sys.modules), fn.__code__, fn.__name__, fn.__qualname__,
                        fn.__module__, fn.__doc__]
    globals_ = fn.__globals__
    try:
        for name in sorted(cloudpickle._extract_code_globals(fn.__code__)):
            parts.append(name)
            _add(parts, globals_.get(name, _MISSING), cloudpickle)
        parts.append(_NEXT)
        _add(parts, fn.__defaults__, cloudpickle)
        for name, value in sorted((fn.__kwdefaults__ or {}).items()):
            parts.append(name)
            _add(parts, value, cloudpickle)
        parts.append(_NEXT)
        for name, value in fn.__annotations__.items():
            parts.append(name)
            _add(parts, value, cloudpickle)
        parts.append(_NEXT)
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not yet filled
                contents = _EMPTY_CELL
            _add(parts, contents, cloudpickle)
    except _Unseen:
        return None
    return tuple(parts)


def same(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """Whether two fingerprints hold the same objects (``old`` keeps its own alive,
    so none of them can have been replaced by another at the same address): a
    global bound anew to an equal value is not the same (the id of one that is
    not a number or string travels with the function, see ``codec.GLOBAL_IDS``)."""
    return (len(old) == len(new) and old[0] == new[0]
            and all(a is b for a, b in zip(old[1:], new[1:], strict=True)))


def _add(parts: list[Any], value: Any, cloudpickle: Any, depth: int = 0) -> None:
    parts.append(value)
    if value is _MISSING or value is _EMPTY_CELL or type(value) in _ATOMS:
        return
    if type(value) in (tuple, frozenset) and depth < 3 and len(value) <= 64:
        for item in value:
            _add(parts, item, cloudpickle, depth + 1)
        return
    if isinstance(value, (types.ModuleType, type, types.FunctionType)):
        by_reference = cloudpickle._should_pickle_by_reference(value)
    else:  # len, math.sqrt: by reference; a bound method ([].append) carries its object
        by_reference = (isinstance(value, types.BuiltinFunctionType)
                        and isinstance(value.__self__, types.ModuleType))
    if not by_reference:
        raise _Unseen
