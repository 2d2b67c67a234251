"""What tasks see: their functions, loaded once per digest, and the exported globals.

The master sends a function's pickle with the first chunk that needs it on
this worker, and only its digest after that (FORGET drops it).  The large
buffers of the functions cached here are kept by their own digest, which the
master sends in place of a buffer held here (:mod:`.held_buffers`).  Functions
shipped by value share their module's namespace (:mod:`.namespaces`).
Exports (``Cluster.export``) land in the worker's clean ``__main__``, in
those namespaces, and in the globals of a ``bind_to_env`` function, where a
name it was bound with wins over an exported one.  They are unpickled as task
functions are (a function among them shares its module's namespace); values
that cannot be loaded here are not set, and a task that then misses one of
their names is told why.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

from ..errors import add_note
from .held_buffers import HeldBuffers, MissingBuffer
from .namespaces import SharedGlobals


class _CachedFunction:
    """A task function loaded once per digest, and how exports reach its globals."""

    __slots__ = ("export_version", "fn", "namespace", "own_names")

    def __init__(self, fn: Callable[..., Any], shared: SharedGlobals) -> None:
        self.fn = fn
        namespace = _dynamic_namespace(fn)
        # A shared namespace gets exports as they come (SharedGlobals.export).
        self.namespace = None if shared.is_shared(namespace) else namespace
        # Names the function captured itself win over exported ones.
        self.own_names = frozenset(self.namespace) if self.namespace is not None else frozenset()
        self.export_version = -1


def _words(error: BaseException) -> str:
    """``"ValueError: its message"`` (whatever its ``__str__`` does)."""
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__


def _dynamic_namespace(fn: Any) -> dict[str, Any] | None:
    """The globals dict of a function shipped by value, or None.

    Exports go into the namespaces of functions shipped by value (a
    ``bind_to_env`` one; the shared ones get them from ``SharedGlobals``),
    never into the namespace of a real, imported module.
    """
    target = getattr(fn, "func", fn)  # functools.partial
    namespace = getattr(target, "__globals__", None)
    if not isinstance(namespace, dict):
        return None
    module = sys.modules.get(str(namespace.get("__name__")))
    if module is not None and getattr(module, "__dict__", None) is namespace:
        return None
    return namespace


class FunctionCache:
    """The task functions by digest, the exports, and the ``__main__`` tasks see (main thread)."""

    def __init__(self) -> None:
        self._functions: dict[bytes, _CachedFunction] = {}
        #: Why a function could not be loaded here: chunks sent before the master
        #: heard of it come with its digest alone, and fail the same way.
        self._failed: dict[bytes, BaseException] = {}
        self._exports: dict[str, Any] = {}
        #: Names whose last export could not be loaded here, and why (only the words:
        #: the error's traceback would keep what the unpickler had built).
        self._failed_exports: dict[str, str] = {}
        self.held = HeldBuffers()  # the large buffers of the functions here
        #: Functions refused for a MissingBuffer: chunks sent by their digest alone before
        #: the master heard of it are refused too, until it sends FORGET or the function.
        self._missing: set[bytes] = set()
        self._export_version = 0
        #: Installed as ``sys.modules["__main__"]`` by the entry point: exports land there.
        self.main_module = types.ModuleType("__main__")
        self.main_module.__dict__["__builtins__"] = __builtins__
        self.shared = SharedGlobals(self.main_module)

    def load_export(self, names: list[str], payload: Any, buffers: list[Any]) -> None:
        """Load an EXPORT's values by ``names`` and :meth:`export` them.

        Values that cannot be loaded here are not set (a value exported before under
        a name is taken away: it is not what the master has); see :meth:`explain`.
        """
        try:
            values = self.shared.loads(None, payload, buffers)
        except (Exception, SystemExit) as exc:  # (a value's own error: the worker goes on)
            self._failed_exports.update(dict.fromkeys(names, _words(exc)))
            self.shared.unexport(names)
            for name in names:
                self._exports.pop(name, None)
            self._export_version += 1
            return
        for name in names:
            self._failed_exports.pop(name, None)
        self.export(values)

    def export(self, values: dict[str, Any]) -> None:
        """Add exported globals; functions see them from their next chunk on."""
        self._exports.update(values)
        self.shared.export(values)
        self._export_version += 1

    def explain(self, error: BaseException) -> None:
        """Note on a task's ``NameError`` for an export that failed to load here, why."""
        name = getattr(error, "name", None) if isinstance(error, NameError) else None
        failure = self._failed_exports.get(name) if isinstance(name, str) else None
        if failure is not None:
            add_note(error, f"sockpool: the value exported as {name!r} could not be loaded "
                            f"on this worker: {failure}")

    def forget(self, digest: bytes) -> None:
        """Drop a cached function (FORGET), and what only it put in a shared namespace;
        unknown digests are ignored."""
        self._functions.pop(digest, None)
        self._failed.pop(digest, None)
        self._missing.discard(digest)
        self.shared.forget(digest)
        self.held.let_go(digest)

    def refuse(self, digest: bytes) -> None:
        """The function ``digest`` came with a buffer not held here (MissingBuffer)."""
        self._missing.add(digest)

    def load(self, digest: bytes, payload: Any, buffers: list[Any],
             buffer_digests: list[bytes] | None = None) -> Callable[..., Any]:
        """The function named by ``digest``, unpickled from ``payload`` when it is not empty
        (``buffer_digests``: those of its ``buffers``, which are kept by them).

        Raises:
            KeyError: an empty payload for a digest not cached here.
            Exception: whatever unpickling the payload raised.
        """
        if len(payload):
            self._missing.discard(digest)
            if buffer_digests:  # (as the master counts them held, loaded or not)
                self.held.hold(digest, buffers, buffer_digests)
            try:
                fn = self.shared.loads(digest, payload, buffers)
            except BaseException as exc:
                self._failed[digest] = exc
                raise
            self._failed.pop(digest, None)
            self._functions[digest] = _CachedFunction(fn, self.shared)
        elif digest not in self._functions and digest in self._failed:
            raise self._failed[digest]
        elif digest in self._missing:
            raise MissingBuffer
        entry = self._functions[digest]
        self.shared.apply(digest)  # its globals as the master sent them with it
        if entry.namespace is not None and entry.export_version != self._export_version:
            for name, value in self._exports.items():
                if name not in entry.own_names:
                    entry.namespace[name] = value
            for name in self._failed_exports:  # (what was exported before under it goes)
                if name not in entry.own_names:
                    entry.namespace.pop(name, None)
            entry.export_version = self._export_version
        return entry.fn
