"""Scripts that do not run as ``sys.modules["__main__"]``, so that results name their classes.

Run as ``python -m cProfile script.py``, by ``runpy.run_module``, by ``exec`` in a
dict of its own or as a doctest, a script's functions and classes say they are of
``__main__``, yet ``sys.modules["__main__"]`` is another module (cProfile, the
driver).  They travel by value all the same; a worker binds them in its own
``__main__`` and names them there in what it sends back.  The master would look
such a name up in its ``sys.modules["__main__"]``: an AttributeError, or, where that
module has the name (cProfile's ``Profile``), a result rebuilt as the wrong class.
So the master looks ``__main__`` names up first in the namespaces of the scripts its
task functions came from, and then its own ``__main__``'s, the one a task function
last came from first (see :func:`note_function`).
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from typing import Any

from ..common import codec

#: The scripts' namespaces, by id, the one a task function last came from last.  A few
#: only: a program that ``exec``s many scripts keeps no more of them alive than this.
_namespaces: dict[int, dict[str, Any]] = {}
_KEPT = 8
_lock = threading.Lock()


def note_function(fn: Any) -> None:
    """Note the namespace ``fn`` (a function, partial, bound method or callable object)
    was defined in, if it is a ``__main__`` that is not ``sys.modules["__main__"]``; and,
    once there is one, ``sys.modules["__main__"]``'s own too, so that the namespace a
    task function last came from is the first looked in, whichever it is."""
    namespace = _globals_of(fn)
    if namespace is None or namespace.get("__name__") != "__main__":
        return
    main = sys.modules.get("__main__")
    if namespace is getattr(main, "__dict__", None) and not _namespaces:
        return  # (the common case: the master's __main__ is the script's)
    with _lock:
        _namespaces.pop(id(namespace), None)
        _namespaces[id(namespace)] = namespace
        while len(_namespaces) > _KEPT:
            del _namespaces[next(iter(_namespaces))]
        codec.main_lookup = _look_up


def definition_of(fn: Any) -> types.FunctionType | type:
    """The function or class that defines a callable: a partial's function, a bound
    method's, a class itself, a callable object's class (a builtin's type)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    return fn if isinstance(fn, (types.FunctionType, type)) else type(fn)


def _globals_of(fn: Any) -> dict[str, Any] | None:
    """The globals of the Python function behind ``fn``: a partial's, a bound method's,
    a ``__main__`` class's or its instance's methods'; None for a builtin."""
    defined_by = definition_of(fn)
    if isinstance(defined_by, types.FunctionType):
        return defined_by.__globals__
    if getattr(defined_by, "__module__", None) != "__main__":
        return None  # (a builtin, a class of a module: at once, as submit(abs, 1) is timed)
    method = next((value for value in vars(defined_by).values()
                   if isinstance(value, types.FunctionType)), None)
    return method.__globals__ if method is not None else None


def _look_up(name: str) -> Any:
    """The object ``__main__.<name>`` names in the latest script namespace that has it
    (``name`` may be dotted: a nested class), else :data:`codec.NOT_FOUND`."""
    first, *rest = name.split(".")
    with _lock:
        namespaces = list(_namespaces.values())
    for namespace in reversed(namespaces):
        if first in namespace:
            found = namespace[first]
            try:
                for part in rest:
                    found = getattr(found, part)
            except AttributeError:
                continue
            return found
    return codec.NOT_FOUND
