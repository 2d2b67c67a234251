"""``bind_to_env``: give a function exactly the values it needs, as its own globals.

R's tutorial helper ``bindToEnv`` made explicit in Python.  Automatic capture
already carries what a function names; ``bind_to_env`` is for what it cannot
see (names looked up with ``globals()[...]`` or ``eval``) and for controlling
exactly what travels.
"""

from __future__ import annotations

import builtins
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ..common.namespace import BoundNamespace, function_parts, make_function

F = TypeVar("F", bound=Callable[..., Any])


def _scopes(env: Mapping[str, Any] | object | None, depth: int) -> list[Mapping[str, Any]]:
    if env is None:
        frame = sys._getframe(depth + 1)
        return [frame.f_locals, frame.f_globals]
    if isinstance(env, Mapping):
        return [env]
    try:
        return [vars(env)]
    except TypeError:
        raise TypeError(f"env must be a mapping or an object with attributes (a module), "
                        f"not {type(env).__name__}") from None


def lookup(names: Iterable[str], env: Mapping[str, Any] | object | None, depth: int
           ) -> dict[str, Any]:
    """Values of ``names`` in ``env``, or in the frame ``depth`` levels above the caller
    (its locals, then its globals, like R's ``parent.frame()``).

    Raises:
        NameError: naming the first name that is not defined.
    """
    scopes = _scopes(env, depth + 1)
    values = {}
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"names must be identifiers given as strings, not {name!r}")
        for scope in scopes:
            if name in scope:
                values[name] = scope[name]
                break
        else:
            raise NameError(f"name {name!r} is not defined")
    return values


def code_names(code: types.CodeType) -> list[str]:
    """The global names a code object and the code nested in it refer to, each once."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += code_names(const)
    return list(dict.fromkeys(names))


def rebind(fn: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    """A copy of ``fn`` whose globals are ``namespace`` (``fn`` itself is untouched)."""
    return make_function(namespace, function_parts(fn))


def bind_to_env(fn: F, *names: str, env: Mapping[str, Any] | object | None = None,
                do_not_rebind: Iterable[str] = (), **values: Any) -> F:
    """A copy of ``fn`` whose globals are a fresh namespace holding exactly the given values.

    Args:
        fn: a Python function (``def`` or ``lambda``).
        names: names to look up in ``env`` (default: the caller's locals, then
            its globals) and put in the namespace.
        env: a mapping or a module to look the names up in.
        do_not_rebind: names of functions to put in the namespace as they are,
            keeping their own globals.
        values: more values for the namespace, by name.

    Functions among the values (other than those in ``do_not_rebind``) are
    rebound to the same namespace, so helpers find each other; the modules
    ``fn`` and they refer to come along (they travel by reference, as names).
    ``fn`` is reachable under its own name, so it may call itself.  The
    original ``fn`` and the functions given are untouched.  The namespace
    travels whole, so lookups through ``globals()`` or ``eval`` work on the
    worker.

    Raises:
        TypeError: ``fn`` is not a Python function, or a name is not a string.
        NameError: a name is not defined in ``env``.
    """
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"bind_to_env() needs a Python function, not {type(fn).__name__}")
    bound = {**lookup(names, env, depth=1), **values}
    if isinstance(do_not_rebind, str):  # one name, not its letters
        raise TypeError(f"do_not_rebind takes a list of names: do_not_rebind=[{do_not_rebind!r}]")
    try:
        keep = set(do_not_rebind)
    except TypeError:
        raise TypeError(f"do_not_rebind takes a list of names, not "
                        f"{type(do_not_rebind).__name__}") from None
    unknown = keep - set(bound)
    if unknown:
        raise NameError(f"do_not_rebind names {sorted(unknown)!r}, which are not bound")

    namespace = BoundNamespace(__builtins__=builtins, __name__=fn.__globals__.get("__name__"))
    functions = [fn] + [v for k, v in bound.items()
                        if isinstance(v, types.FunctionType) and k not in keep]
    for function in functions:  # modules the code names travel by reference, so come along
        for name in code_names(function.__code__):
            value = function.__globals__.get(name)
            if isinstance(value, types.ModuleType):
                namespace.setdefault(name, value)
    for name, value in bound.items():
        rebound = isinstance(value, types.FunctionType) and name not in keep
        namespace[name] = rebind(value, namespace) if rebound else value
    copy = rebind(fn, namespace)
    namespace.setdefault(fn.__name__, copy)
    return copy  # type: ignore[return-value]
