"""Turning functions, arguments and results into zmq frames and back (a task's
exception: :mod:`.task_errors`).

Pickle protocol 5 throughout.  Buffers of at least :data:`OOB_THRESHOLD` bytes
(NumPy arrays, those NumPy copies into a pickle too: :mod:`.arrays`; anything
pickled as a ``PickleBuffer``) leave the pickle stream and travel as frames of
their own, so they are never copied into it.  ``bytes`` and ``bytearray`` are
not among them: Python's pickler writes them into the stream.

The serializer that *writes* is a choice (cloudpickle by default, dill, or the
standard pickle); reading is always ``pickle.loads``, since all three write
standard pickles whose reconstructors import what they need.  This module is
shared by the master and the worker and imports neither cloudpickle nor dill
until a pickle has to be written with them.  What only the master needs (the
by-value check, function payloads and their digests) is in ``sockpool.capture``.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import io
import pickle
import sys
import types
import weakref
from collections import ChainMap
from collections.abc import Callable, Sequence
from typing import Any

from . import namespace
from .arrays import (
    ndarray_type,
    recarray_type,
    reduce_ndarray,
    reduce_recarray,
    special_reduction,
)
from .memmaps import memmap_type, reduce_memmap
from .proxies import proxy_types, reduce_proxy

#: Buffers at least this large travel out of band as their own frames.  Below
#: it, a separate zmq frame costs more than copying the bytes into the pickle.
OOB_THRESHOLD = 64 * 1024

#: Messages whose out-of-band buffers add up to at least this go through
#: shared memory, where the receiver shares the sender's machine.
SHARED_MIN_BYTES = 1024 * 1024

SERIALIZERS = ("cloudpickle", "dill", "pickle")

#: The key, beside a task function's captured globals, of the master's ``id()`` of
#: each that is not a number, string or None: a worker tells such a global the
#: master bound anew (``CACHE = {}``, a class defined again in a notebook) from one
#: it kept, whose pickle may be the same.  (Not of numbers and strings: an equal
#: one is the same value, and its id would change the function's digest, sending
#: it again with all it captures.)
GLOBAL_IDS = "<sockpool: the master's ids>"
_SAME_BY_VALUE = (int, float, complex, str, bytes, bool, type(None))

Frames = list[Any]  # bytes-like objects: bytes, memoryview, PickleBuffer, zmq.Frame


def _code_in_file(rebuild: Callable[..., types.CodeType], args: tuple[Any, ...],
                  filename: str) -> types.CodeType:
    """Rebuild a code object shipped by value, under the file it was written in."""
    return rebuild(*args).replace(co_filename=filename)


_picklers: dict[str, type[pickle.Pickler]] = {}


def pickler_class(serializer: str) -> type[pickle.Pickler]:
    """The pickler class of a serializer name (made once: see below)."""
    cls = _picklers.get(serializer)
    if cls is not None:
        return cls
    check_serializer(serializer)
    if serializer == "cloudpickle":
        import cloudpickle

        code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]
        make_skeleton_class = cloudpickle.cloudpickle._make_skeleton_class

        def code_reduce_keeping_filename(code: types.CodeType) -> Any:
            # cloudpickle 3.1.3 ships every code object as "<dynamic-code>"; a
            # worker's traceback or warning must name the user's file and line.
            rebuild, args = code_reduce(code)
            return _code_in_file, (rebuild, args, code.co_filename)

        class CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
            dispatch_table = ChainMap({types.CodeType: code_reduce_keeping_filename},
                                      cloudpickle.Pickler.dispatch_table)

            #: Whether functions carry GLOBAL_IDS (task functions do; a worker takes
            #: them out before their globals are set).
            global_ids = False

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                # Before the C pickler's __init__, which reads it then.
                self.dispatch_table = _flattened(  # type: ignore[assignment]
                    CloudPickler.dispatch_table)
                super().__init__(*args, **kwargs)

            def reducer_override(self, obj: Any) -> Any:
                reduced = _reduce_special(obj)
                if reduced is not NotImplemented:
                    return reduced
                reduced = super().reducer_override(obj)
                if (type(reduced) is tuple and reduced[0] is make_skeleton_class
                        and vars(obj).get("__slots__")):
                    reduced = _with_slots(reduced, obj.__slots__)
                return reduced

            def _dynamic_function_reduce(self, func: Any) -> Any:
                reduced = super()._dynamic_function_reduce(func)
                captured = reduced[2][1]["__globals__"]
                if self.global_ids and captured:
                    captured[GLOBAL_IDS] = {name: id(value) for name, value in captured.items()
                                            if type(value) not in _SAME_BY_VALUE}
                return reduced

        cls = CloudPickler
    elif serializer == "dill":
        import dill

        class DillPickler(dill.Pickler):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                # recurse: ship the globals a function names, as cloudpickle does;
                # dill's default refers to the master's __main__, empty on a worker.
                kwargs.setdefault("recurse", True)
                super().__init__(*args, **kwargs)

            def reducer_override(self, obj: Any) -> Any:
                return _reduce_special(obj)

        cls = DillPickler
    else:
        cls = pickle.Pickler
    _picklers[serializer] = cls
    return cls


_flat: tuple[list[dict[Any, Any]], dict[Any, Any]] = ([], {})


def _flattened(table: ChainMap[Any, Any]) -> dict[Any, Any]:
    """``table`` as one dict, made again only when a dict under it changed (copyreg's,
    or cloudpickle's, where its users add reducers): the C pickler looks a dict up in
    C, a ChainMap with a Python call per object (a third of the time of a dict of
    2000 small arrays)."""
    global _flat
    leaves = [leaf for chained in table.maps for leaf in getattr(chained, "maps", [chained])]
    if _flat[0] != leaves:
        _flat = ([dict(leaf) for leaf in leaves], dict(table))
    return _flat[1]


def _with_slots(reduced: tuple[Any, ...], slots: Any) -> tuple[Any, ...]:
    """cloudpickle's reduction of a class shipped by value, its skeleton made with
    ``slots``: cloudpickle 3.1 makes it without, so its instances had a ``__dict__``
    on the worker and failed to load as results where the class has none.  (Not for
    empty ones: a ``NamedTuple``'s ``()``, which its metaclass refuses in the body.)"""
    type_constructor, name, bases, type_kwargs, tracker_id, extra = reduced[1]
    return (reduced[0], (type_constructor, name, bases, {**type_kwargs, "__slots__": slots},
                         tracker_id, extra), *reduced[2:])


#: Weak dictionaries travel as their entries, which stay on the worker where what
#: they hold weakly travels too (held by something else there), as cloudpickle
#: sends a ``WeakSet``; pickled as they are, their callback's weak reference fails.
#: (A ``functools.singledispatch`` function of ``__main__`` keeps its cache in one.)
_WEAK_DICTIONARIES = (weakref.WeakKeyDictionary, weakref.WeakValueDictionary)


def _reduce_special(obj: Any) -> Any:
    """The reducers the library's picklers add: ``bind_to_env`` functions, memmaps
    (see :mod:`.memmaps`), arrays NumPy would pickle in band (:mod:`.arrays`),
    ``lru_cache``'d functions of ``__main__``, manager proxies, weak dictionaries
    and ``cached_property`` (its lock, before Python 3.12)."""
    cls = type(obj)
    if cls in _WEAK_DICTIONARIES:
        return cls, (dict(obj),)
    if cls is functools.cached_property and hasattr(obj, "lock"):
        return _cached_property, (obj.func, obj.attrname, obj.__doc__)
    if cls is memmap_type():
        return reduce_memmap(obj)
    if (reduced := special_reduction(obj)) is not None:
        return reduced
    if (type(obj) is functools._lru_cache_wrapper
            and getattr(obj.__wrapped__, "__module__", None) == "__main__"):
        # It pickles by name, and a worker's __main__ has no such name: the function
        # it wraps travels by value instead, wrapped again there (with a cache of its own).
        parameters = obj.cache_parameters()
        return _cached, (obj.__wrapped__, parameters["maxsize"], parameters["typed"])
    managers = sys.modules.get("multiprocessing.managers")
    if managers is not None and isinstance(obj, managers.BaseProxy):
        return reduce_proxy(obj)
    return namespace.reduce_bound_function(obj)


def _cached(function: Callable[..., Any], maxsize: int | None, typed: bool) -> Any:
    """``function`` under ``functools.lru_cache(maxsize, typed)`` (see _reduce_special)."""
    return functools.lru_cache(maxsize=maxsize, typed=typed)(function)


def _cached_property(function: Callable[..., Any], name: str | None, doc: str | None
                     ) -> functools.cached_property[Any]:
    """A ``cached_property`` of ``function`` under ``name``, made anew where it lands:
    before Python 3.12 it holds a lock, which cannot travel (see _reduce_special).
    Named here: a class rebuilt by cloudpickle sets it without ``__set_name__``."""
    made = functools.cached_property(function)
    made.attrname = name
    made.__doc__ = doc
    return made


def _standard_pickler(stream: io.BytesIO, buffer_callback: Callable[[Any], bool] | None
                      ) -> pickle.Pickler:
    """The C pickler, protocol 5, with memmaps pickled as :mod:`.memmaps` says and
    proxies with their authkey."""
    pickler = pickle.Pickler(stream, 5, buffer_callback=buffer_callback)
    if (table := _fast_dispatch_table()) is not None:
        pickler.dispatch_table = table
    return pickler


def dumps_standard(obj: Any, large: list[Any] | None = None) -> bytes:
    """``pickle.dumps(obj, 5)`` with the reducers the library adds (see
    :func:`_standard_pickler`): every buffer in band, or those of
    :data:`OOB_THRESHOLD` bytes or more appended to ``large`` where it is given."""
    def in_band(buffer: pickle.PickleBuffer) -> bool:
        if large is None or buffer.raw().nbytes < OOB_THRESHOLD:
            return True
        large.append(buffer)
        return False

    stream = io.BytesIO()
    _standard_pickler(stream, in_band).dump(obj)
    return stream.getvalue()


def _fast_dispatch_table() -> dict[type, Any] | None:
    """copyreg's reducers as they are now, plus the memmap's and the proxies', for the
    C pickler: a dict (a ChainMap would cost a Python call per object); None until
    NumPy or multiprocessing.managers is loaded."""
    memmap, proxies = memmap_type(), proxy_types()
    if memmap is None and not proxies:
        return None
    table = {**copyreg.dispatch_table, **dict.fromkeys(proxies, reduce_proxy)}
    if memmap is not None:
        table[memmap] = reduce_memmap
    if (ndarray := ndarray_type()) is not None and ndarray not in table:  # (see .arrays)
        table[ndarray] = reduce_ndarray
    if (recarray := recarray_type()) is not None and recarray not in table:
        table[recarray] = reduce_recarray
    return table


def _contents(stream: io.BytesIO) -> memoryview:
    """A stream's bytes, without copying them.

    Not ``getbuffer()``: a buffer export of a BytesIO that ends up in a
    reference cycle crashes CPython 3.12.1's garbage collector (gh-111049) and
    raises "Existing exports of data" elsewhere (gh-111331).  ``getvalue()``
    hands over the stream's own bytes object when nothing else holds it.
    """
    return memoryview(stream.getvalue())


def check_serializer(serializer: str) -> str:
    """Validate a serializer name (raises ``ValueError`` naming the choices)."""
    if serializer not in SERIALIZERS:
        raise ValueError(f"serializer must be one of {', '.join(SERIALIZERS)}, "
                         f"not {serializer!r}")
    return serializer


def dumps(obj: Any, serializer: str = "cloudpickle", *, copy_buffers: bool = False,
          prefix: bytes = b"", store: Callable[[list[Any]], list[Any]] | None = None,
          by_value_check: Callable[[memoryview], bool] | None = None,
          standard_first: bool = True, global_ids: bool = False,
          plain: bool = False) -> Frames:
    """Pickle ``obj`` into ``[prefix + payload, *out_of_band_buffers]``.

    Args:
        obj: what to serialize.
        serializer: ``"cloudpickle"``, ``"dill"`` or ``"pickle"``.
        copy_buffers: copy out-of-band buffers now, so that the caller may
            mutate the originals while the frames wait to be sent.
        prefix: bytes written before the pickle in the first frame (a header).
        store: where the out-of-band buffers go when they add up to
            :data:`SHARED_MIN_BYTES` or more: it copies them (into shared
            memory) and returns the frames that replace them.
        by_value_check: the master's by-value rule (``sockpool.capture``),
            given what the standard pickler wrote: true when it names a module
            a worker cannot import, so that cloudpickle writes it again, by
            value.  A worker passes none: its ``__main__`` is empty, so there a
            by-reference pickle that succeeds names something the master has too.
        standard_first: with cloudpickle, try the standard pickler first (False:
            the caller knows the check would flag it, and spares that first pass).
        global_ids: with cloudpickle, a function shipped by value carries the
            ``id()`` of each global it captures (see :data:`GLOBAL_IDS`).
        plain: ``obj`` is plain data, classes and functions (the relay's output,
            pickled within a task's print): an error of the standard pickler other
            than a failure to pickle by name is raised, not left to cloudpickle; a
            task's signal handler raised it.

    Raises:
        Exception: whatever the pickler raised; callers turn it into a
        :class:`~sockpool.errors.CaptureError` naming what failed.
    """
    buffers: list[Any] = []

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OOB_THRESHOLD:
            return True  # in-band
        buffers.append(buf)
        return False

    def frames(view: memoryview) -> Frames:
        if not buffers:
            return [view]
        if store is not None and sum(b.raw().nbytes for b in buffers) >= SHARED_MIN_BYTES:
            with contextlib.suppress(OSError):  # out of shared memory: the socket it is
                return [view, *store(buffers)]
        if copy_buffers:
            return [view, *(bytes(b.raw()) for b in buffers)]
        return [view, *buffers]

    if serializer == "cloudpickle" and standard_first:
        # Fast path: the C pickler handles plain data and importable objects at a
        # fraction of cloudpickle's cost.  It fails on lambdas and local objects,
        # and a pickle that by_value_check flags would not load on a worker: both
        # go to cloudpickle, which ships them by value.
        stream = io.BytesIO()
        stream.write(prefix)
        try:
            _standard_pickler(stream, keep_large).dump(obj)
        except Exception as error:
            if plain and not isinstance(error, _BY_NAME_ERRORS):
                raise  # (its own time limit, say, as the task printed)
            # (error is not kept: its traceback holds this frame, whose buffers a
            # reference cycle would leave to the collector, which crashes on them)
        else:
            view = _contents(stream)
            if by_value_check is None or not by_value_check(view):
                return frames(view)
            del view
        buffers.clear()
    stream = io.BytesIO()
    stream.write(prefix)
    cls = pickler_class(serializer)
    if cls is pickle.Pickler:
        _standard_pickler(stream, keep_large).dump(obj)
    else:
        pickler = cls(stream, protocol=5, buffer_callback=keep_large)
        if global_ids:
            pickler.global_ids = True  # type: ignore[attr-defined]
        pickler.dump(obj)
    return frames(_contents(stream))


#: What the standard pickler raises for a class or function it cannot pickle by name.
_BY_NAME_ERRORS = (pickle.PicklingError, AttributeError, TypeError)


def dumps_in_band(obj: Any, serializer: str = "cloudpickle") -> bytes:
    """``obj`` pickled into one bytes object, its buffers in band whatever their size
    (an exception holding an array travels inside the error's own pickle).  As
    :func:`dumps` without a by-value check: with cloudpickle, the standard pickler first."""
    cls = pickler_class(serializer)
    if cls is not pickle.Pickler and serializer == "cloudpickle":
        with contextlib.suppress(Exception):
            return dumps_standard(obj)
    stream = io.BytesIO()
    if cls is pickle.Pickler:
        _standard_pickler(stream, None).dump(obj)
    else:
        cls(stream, protocol=5).dump(obj)
    return stream.getvalue()


#: What :data:`main_lookup` returns for a name it does not know.
NOT_FOUND = object()
#: The master's lookup of a ``__main__`` name in the scripts its functions came from,
#: where one is not ``sys.modules["__main__"]`` (set by ``sockpool.capture.scripts``);
#: None until then, and always on a worker.
main_lookup: Callable[[str], Any] | None = None


class _ScriptUnpickler(pickle.Unpickler):
    """Looks ``__main__`` names up with :data:`main_lookup` first."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__" and main_lookup is not None:
            found = main_lookup(name)
            if found is not NOT_FOUND:
                return found
        return super().find_class(module, name)


def loads(payload: Any, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle a payload and its out-of-band buffers (any bytes-like objects)."""
    if main_lookup is None:
        return pickle.loads(payload, buffers=buffers)
    return _ScriptUnpickler(io.BytesIO(payload), buffers=buffers).load()


def describe(obj: object) -> str:
    """``module.QualName`` of an object's type, for error messages."""
    cls = type(obj)
    module = cls.__module__
    name = cls.__qualname__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


def first_unpicklable(items: Sequence[Any], serializer: str) -> tuple[int, BaseException] | None:
    """Find the first item that fails to pickle: ``(index, error)`` or ``None``."""
    for index, item in enumerate(items):
        try:
            dumps(item, serializer)
        except Exception as exc:
            return index, exc
    return None
