"""The globals of functions made by ``bind_to_env``, and how they travel whole.

cloudpickle ships a function with only the globals its code names, so a name
looked up dynamically (``globals()["helper"]``, ``eval``) would be missing on
the worker.  A :class:`BoundNamespace` travels as a unit instead: every value
in it, and every function in it rebuilt around the one new namespace, so the
helpers still find each other there.  Master and worker both pickle and
unpickle these (a task may return a bound function), so this module holds
only that; making a namespace is ``bind_to_env``'s, in ``sockpool.capture``.
"""

from __future__ import annotations

import builtins
import types
from typing import Any

#: The key under which a bound function is stored when its name is taken.
ENTRY_KEY = "__sockpool_entry__"


class BoundNamespace(dict[str, Any]):
    """A namespace made by ``bind_to_env``: the globals of the functions bound to it."""

    def __reduce__(self) -> tuple[Any, ...]:
        functions = {}
        values = {}
        for name, value in self.items():
            if name == "__builtins__":
                continue
            if isinstance(value, types.FunctionType) and value.__globals__ is self:
                functions[name] = function_parts(value)
            else:
                values[name] = value
        return (_restore, (values, functions))


def function_parts(fn: types.FunctionType) -> tuple[Any, ...]:
    """What :func:`make_function` needs to rebuild ``fn`` around another namespace."""
    return (fn.__code__, fn.__name__, fn.__qualname__, fn.__defaults__, fn.__kwdefaults__,
            fn.__closure__, dict(fn.__dict__), fn.__module__, fn.__doc__,
            dict(getattr(fn, "__annotations__", {}) or {}))


def make_function(namespace: dict[str, Any], parts: tuple[Any, ...]) -> types.FunctionType:
    """A function made of :func:`function_parts` whose globals are ``namespace``."""
    code, name, qualname, defaults, kwdefaults, closure, attrs, module, doc, annotations = parts
    fn = types.FunctionType(code, namespace, name, defaults, closure)
    fn.__qualname__ = qualname
    fn.__kwdefaults__ = kwdefaults
    fn.__dict__.update(attrs)
    fn.__module__ = module
    fn.__doc__ = doc
    fn.__annotations__ = annotations
    return fn


def _restore(values: dict[str, Any], functions: dict[str, tuple[Any, ...]]) -> BoundNamespace:
    namespace = BoundNamespace(values)
    namespace["__builtins__"] = builtins
    for name, parts in functions.items():
        namespace[name] = make_function(namespace, parts)
    return namespace


def _entry_key(fn: types.FunctionType) -> str:
    """The name under which ``fn`` sits in its bound namespace."""
    namespace = fn.__globals__
    for name, value in namespace.items():
        if value is fn:
            return name
    namespace[ENTRY_KEY] = fn
    return ENTRY_KEY


def entry(namespace: BoundNamespace, key: str) -> Any:
    """Rebuild a bound function: its namespace's entry ``key`` (used when unpickling)."""
    return namespace[key]


def is_bound(obj: Any) -> bool:
    """Whether ``obj`` is a function made by ``bind_to_env``."""
    return type(obj) is types.FunctionType and type(obj.__globals__) is BoundNamespace


def reduce_bound_function(obj: Any) -> Any:
    """How a bound function pickles, for a pickler's ``reducer_override``.

    Its namespace's entry, with the namespace whole; ``NotImplemented`` for
    anything else, which the pickler then handles as usual.
    """
    if is_bound(obj):
        return entry, (obj.__globals__, _entry_key(obj))
    return NotImplemented
