"""What travels with a function: ``inspect_capture``, and finding what cannot travel.

The walk follows what cloudpickle ships with a function shipped by value:
closure cells, the globals its code names, defaults, and, recursively, the
functions among them that are shipped by value too.  Functions importable by
name on a worker travel as that name and carry nothing (the rule is in
:mod:`.by_value`).
"""

from __future__ import annotations

import functools
import html
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..common import codec
from ..common import namespace as bound_namespace
from ..common.checks import as_int
from ..common.proc import format_bytes
from . import pickling
from .binding import code_names
from .by_value import is_local_module, module_name, register_local_modules, travels_by_value

#: How deep the search for an unpicklable value goes into containers and objects.
MAX_DEPTH = 6
#: How many items of one container the search looks at.
MAX_ITEMS = 1000


def _cached_main(obj: Any) -> bool:
    """Whether ``obj`` is an ``lru_cache`` of a ``__main__`` function: it travels as
    the function, by value, under a fresh cache (see ``codec``)."""
    return (type(obj) is functools._lru_cache_wrapper
            and getattr(obj.__wrapped__, "__module__", None) == "__main__")


def _function_like(obj: Any) -> bool:
    """Whether what ``obj`` carries is followed (its own captures listed)."""
    return isinstance(obj, (types.FunctionType, functools.partial, types.MethodType)
                      ) or _cached_main(obj)


def captured(obj: Any) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` for each thing ``obj`` carries with it when pickled."""
    if _cached_main(obj):
        yield "__wrapped__", obj.__wrapped__
    elif isinstance(obj, functools.partial):
        yield "func", obj.func
        for i, arg in enumerate(obj.args):
            yield f"args[{i}]", arg
        yield from obj.keywords.items()
    elif isinstance(obj, types.MethodType):
        yield "__self__", obj.__self__
        yield "__func__", obj.__func__
    elif isinstance(obj, types.FunctionType) and travels_by_value(obj):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or (), strict=False):
            try:
                yield name, cell.cell_contents
            except ValueError:  # an empty cell
                continue
        namespace = obj.__globals__
        names = (namespace if bound_namespace.is_bound(obj) else code_names(code))
        for name in names:
            if name in namespace and not name.startswith("__"):
                yield name, namespace[name]
        for i, default in enumerate(obj.__defaults__ or ()):
            yield f"defaults[{i}]", default
        yield from (obj.__kwdefaults__ or {}).items()


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    """Where to look inside a value that failed to pickle."""
    if _function_like(value):
        for name, child in captured(value):
            yield f" -> {name}", child
    elif isinstance(value, dict):
        for key, child in list(value.items())[:MAX_ITEMS]:
            yield f"[{key!r}]", child
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, child in enumerate(list(value)[:MAX_ITEMS]):
            yield f"[{i}]", child
    elif isinstance(value, (type, types.ModuleType)):
        return
    elif hasattr(value, "__dict__") and _reduces_by_default(type(value)):
        for name, child in list(vars(value).items())[:MAX_ITEMS]:
            yield f".{name}", child


def _reduces_by_default(cls: type) -> bool:
    """Whether pickle would pickle instances through their ``__dict__`` (no custom reduce)."""
    custom = ("__reduce_ex__", "__reduce__", "__getstate__")
    return not any(name in vars(base) for base in cls.__mro__[:-1] for name in custom)


def _fails(value: Any, serializer: str) -> BaseException | None:
    try:
        pickling.dumps(value, serializer)
    except Exception as exc:
        return exc
    return None


def find_unpicklable(value: Any, path: str, serializer: str
                     ) -> tuple[str, Any, BaseException] | None:
    """The deepest value under ``value`` that fails to pickle: (path, value, error), or None."""

    def search(value: Any, path: str, depth: int) -> tuple[str, Any, BaseException] | None:
        error = _fails(value, serializer)
        if error is None:
            return None
        if depth < MAX_DEPTH:
            for step, child in _children(value):
                found = search(child, path + step, depth + 1)
                if found is not None:
                    return found
        return path, value, error

    return search(value, path, 0)


def describe_unpicklable(value: Any, root: str, serializer: str) -> str | None:
    """``"worker -> fit_one -> conn: sqlite3.Connection (TypeError: ...)"``, or None."""
    found = find_unpicklable(value, root, serializer)
    if found is None:
        return None
    path, culprit, error = found
    text = f"{path}: {codec.describe(culprit)} ({type(error).__name__}: {error})"
    # Only where dill takes the whole of it (not just the first part found that
    # fails), and not for what belongs to this process (see _tied_to_this_process).
    if (serializer != "dill" and not _tied_to_this_process(culprit)
            and _fails(value, "dill") is None):
        text += '; serializer="dill" would work for it: Cluster(serializer="dill")'
    return text


def _tied_to_this_process(value: Any) -> bool:
    """Whether dill's copy of ``value`` in a worker would be another thing that only
    looks the same: an open file is sent as its name and mode (reopened there,
    ``"w"`` truncates it, and the workers' writes overwrite each other or are never
    flushed), and an RLock as held (by no thread there: a task that takes it waits
    forever).  A lock's copy is a lock of that worker, as under a fork."""
    import io
    import socket

    return isinstance(value, (io.IOBase, socket.socket, _RLOCK))


_RLOCK = type(threading.RLock())


@dataclass(frozen=True)
class CaptureEntry:
    """One thing a function carries: where, what type, how many bytes pickled (0, and
    ``error`` saying why, for one that cannot travel)."""

    name: str
    type: str
    nbytes: int
    error: str = ""


@dataclass
class CaptureReport:
    """What would travel with a function (:func:`inspect_capture`).

    Iterate over it for its :class:`CaptureEntry` items: those that cannot travel
    first, then the rest biggest first.
    """

    function: str
    entries: list[CaptureEntry]
    total_bytes: int
    modules_by_value: list[str] = field(default_factory=list)
    modules_by_reference: list[str] = field(default_factory=list)
    #: Why the function cannot travel ("" when it can); its entries say which part.
    error: str = ""

    def __post_init__(self) -> None:
        self.entries.sort(key=lambda e: (not e.error, -e.nbytes))  # (stable: ties as found)

    def __iter__(self) -> Iterator[CaptureEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def biggest(self, count: int = 5) -> list[CaptureEntry]:
        """The ``count`` largest entries."""
        if as_int(count) is None or count < 0:
            raise ValueError(f"count must be a non-negative integer, not {count!r}")
        return sorted(self.entries, key=lambda e: -e.nbytes)[:count]

    def __str__(self) -> str:
        lines = [f"{self.function} cannot travel: {self.error}" if self.error
                 else f"{self.function} carries {format_bytes(self.total_bytes)} in all"]
        if self.entries:
            width = max(len(e.name) for e in self.entries)
            type_width = max(len(e.type) for e in self.entries)
            lines += [f"  {e.name:<{width}}  {e.type:<{type_width}}  {_size(e):>9}"
                      for e in self.entries]
        else:
            lines.append("  (nothing: it travels by name)")
        if self.modules_by_value:
            lines.append("modules shipped by value: " + ", ".join(self.modules_by_value))
        if self.modules_by_reference:
            lines.append("modules imported on the worker: " + ", ".join(self.modules_by_reference))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CaptureReport {self.function}: {len(self.entries)} entries, " \
               f"{format_bytes(self.total_bytes)}>\n{self}"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(e.name)}</code></td><td>{html.escape(e.type)}</td>"
            f"<td style='text-align:right'>{html.escape(_size(e))}</td></tr>"
            for e in self.entries)
        headline = (f"cannot travel: {html.escape(self.error)}" if self.error
                    else f"carries {format_bytes(self.total_bytes)}")
        parts = [f"<p><b>{html.escape(self.function)}</b> {headline}</p>",
                 f"<table><tr><th>name</th><th>type</th><th>size</th></tr>{rows}</table>"
                 if rows else "<p>(nothing: it travels by name)</p>"]
        for label, modules in (("modules shipped by value", self.modules_by_value),
                               ("modules imported on the worker", self.modules_by_reference)):
            if modules:
                cells = "".join(f"<td>{html.escape(name)}</td>" for name in modules)
                parts.append(f"<p>{label}:</p><table><tr>{cells}</tr></table>")
        return "".join(parts)


def _size(entry: CaptureEntry) -> str:
    return f"cannot travel ({entry.error})" if entry.error else format_bytes(entry.nbytes)


def _entry(name: str, value: Any, serializer: str) -> CaptureEntry:
    """What ``value`` costs to carry, or why it cannot be."""
    try:
        frames = pickling.dumps(value, serializer)
    except Exception as exc:
        return CaptureEntry(name, codec.describe(value), 0, f"{type(exc).__name__}: {exc}")
    return CaptureEntry(name, codec.describe(value),
                        sum(memoryview(frame).nbytes for frame in frames))


def inspect_capture(fn: Any, serializer: str = "cloudpickle") -> CaptureReport:
    """Report what would travel with ``fn``: each name, its type, its size.

    Follows functions shipped by value into the functions they call
    (``worker -> fit_one -> data``), and lists the modules shipped by value
    (local ``.py`` files next to your script) and those imported by name.
    """
    codec.check_serializer(serializer)
    register_local_modules(serializer)
    entries: list[CaptureEntry] = []
    by_value: set[str] = set()
    by_reference: set[str] = set()
    seen: set[int] = set()
    root = getattr(fn, "__name__", type(fn).__name__)

    def walk(obj: Any, prefix: str) -> None:
        """List what ``obj`` carries, then what the functions among it carry."""
        if id(obj) in seen:
            return
        seen.add(id(obj))
        later: list[tuple[Any, str]] = []
        for name, value in captured(obj):
            path = f"{prefix} -> {name}"
            if id(value) in seen and not isinstance(value, types.ModuleType):
                continue  # each object once, at its first path (bound helpers share one namespace)
            if isinstance(value, types.ModuleType):
                local = is_local_module(value.__name__)
                (by_value if local else by_reference).add(value.__name__)
                if not local:
                    continue
            elif callable(value) and not travels_by_value(value) and not isinstance(
                    value, functools.partial) and not _cached_main(value):
                module = module_name(value)
                if module:
                    by_reference.add(module)
                continue
            if not _function_like(value):
                seen.add(id(value))
            entries.append(_entry(path, value, serializer))
            if _function_like(value):
                later.append((value, path))
            module = module_name(value) if isinstance(value, type) else ""
            if is_local_module(module):
                by_value.add(module)
        for value, path in later:
            walk(value, path)

    walk(fn, root)
    if is_local_module(module_name(fn)):
        by_value.add(module_name(fn))
    error = ""
    try:
        total = pickling.dumps_function(fn, serializer)[0].nbytes
    except Exception as exc:
        total, error = sum(e.nbytes for e in entries), f"{type(exc).__name__}: {exc}"
    return CaptureReport(root, entries, total, sorted(by_value), sorted(by_reference - by_value),
                         error)
