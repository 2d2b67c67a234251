"""The globals of functions made by ``bind_to_env``, and how they travel whole.

cloudpickle ships a function with only the globals its code names, so a name
looked up dynamically (``globals()["helper"]``, ``eval``) would be missing on
the worker.  A :class:`BoundNamespace` travels as a unit instead: every value
in it, and every function in it rebuilt around the one new namespace, so the
helpers still find each other there.  The worker imports this module to
rebuild one; it holds nothing host-only.
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
                functions[name] = _function_parts(value)
            else:
                values[name] = value
        return (_restore, (values, functions))


def _function_parts(fn: types.FunctionType) -> tuple[Any, ...]:
    return (fn.__code__, fn.__name__, fn.__qualname__, fn.__defaults__, fn.__kwdefaults__,
            fn.__closure__, dict(fn.__dict__), fn.__module__, fn.__doc__,
            dict(getattr(fn, "__annotations__", {}) or {}))


def rebind(fn: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    """A copy of ``fn`` whose globals are ``namespace`` (``fn`` itself is untouched)."""
    return _make_function(namespace, _function_parts(fn))


def _make_function(namespace: dict[str, Any], parts: tuple[Any, ...]) -> types.FunctionType:
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
        namespace[name] = _make_function(namespace, parts)
    return namespace


def entry_key(fn: types.FunctionType) -> str:
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
