"""One namespace per module shipped by value, shared by every function from it.

cloudpickle rebuilds a function shipped by value (from ``__main__``, a
notebook, or a local module) around a fresh globals dict holding what the
function names, one dict per pickle.  Alone, that would keep apart what a
user's module keeps together: a ``Pool(initializer=load)`` whose ``load``
sets ``global model`` would set it in its own dict, and the task functions,
pickled apart, would never see it.  So here, as in the user's process, the
functions of one module share one namespace: ``__main__``'s is the worker's
``__main__`` (where exports land too), another module's a dict of its own.

Who wins when both sides set a name: each function carries the master's
values of the globals it names, as they were when it was sent, and they are
put in the namespace each time it runs, unless code on this worker (an
initializer, ``setup``, ``run_on_all``, a task) bound the name since the
master last put it there, or, for a small value, changed it in place, while
the master's stayed as it was (an initializer filling a ``dict``); the
worker's value then stays, as it would in a ``multiprocessing`` worker.
"Stayed as it was" means the same pickle (where the value is small) and, for
what is not a number or string, the same object (each function carries the
master's ``id()`` of those, ``codec.GLOBAL_IDS``): a name the master bound anew
since (``CACHE = {}``, a class or function defined again in a notebook, an
instance of it) is put, even where the pickles match; and the ``__main__``
classes a small value's pickle names count by identity, so that a list refilled
with instances of a class defined again counts as changed.  What the master put
is what it sent: a payload that comes again (the same values, or a fresh object
at an id the master used before) puts its small values as they came, made again
from the pickle kept then, where a task here has changed one in place since.
A name a function uses that it does not carry was no global of the master's
when it was sent (deleted since, say): a value the master put there earlier
is dropped before it runs, so that the name means there what it meant in the
master (a builtin, or a ``NameError``).  What only forgotten functions carried
is dropped with them, so that their captured data is freed as before.

A function among a chunk's arguments (``pool.starmap(call, [(fn, x)])``, a joblib
batch) keeps the globals cloudpickle made it: a task may keep it past its chunk,
and what it carried must live as long as it does.  The names the worker's code
bound are copied into them, by the rule above, as they are when it arrives.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import pickle
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..common.codec import GLOBAL_IDS

_UNSET = object()

#: A small value's pickle (see :func:`_small_pickle`): how the worker tells whether the
#: master changed a value, and what it makes the value again from.
Small = bytes


#: What one function carries for one namespace: the namespace, the values by name, the
#: global names it uses that the master did not have, the master's ids of the values,
#: and its small values as they came.
Carried = tuple[dict[str, Any], dict[str, Any], frozenset[str], Mapping[str, int], "Sent"]


class Sent(NamedTuple):
    """The small values one function carries for one namespace, as they came: each one's
    :data:`Small`, and where there are several, one pickle of them all (two names of one
    object, ``BY_NAME = {"items": ITEMS}``, must be made again as one object)."""

    smalls: dict[str, Small]
    together: bytes | None


class SharedGlobals:
    """The namespaces of the modules shipped by value, and what the master put in them."""

    def __init__(self, main: types.ModuleType) -> None:
        self._modules: dict[str, types.ModuleType] = {"__main__": main}
        main_namespace = main.__dict__
        self._namespaces: dict[str, dict[str, Any]] = {"__main__": main_namespace}
        # Per namespace (by id), each name the master put there and the value it put,
        # and, for a small value, its pickle as it was then (see _set).
        self._put: dict[int, dict[str, Any]] = {id(main_namespace): {}}
        self._as_put: dict[int, dict[str, Small | None]] = {id(main_namespace): {}}
        # Per namespace, the master's id() of each name's value when last sent.
        self._master_ids: dict[int, dict[str, int]] = {id(main_namespace): {}}
        self._exports: dict[str, Any] = {}
        self._carried: dict[bytes, list[Carried]] = {}  # by function digest
        self._loading: list[Carried] = []  # what the function being unpickled carries

    def loads(self, digest: bytes | None, payload: Any, buffers: Sequence[Any]) -> Any:
        """Unpickle a task function's payload (``digest``) or exported values (None), the
        functions of a module shipped by value sharing one namespace."""
        self._loading = []
        unpickler = _Unpickler(io.BytesIO(payload), buffers=buffers)
        unpickler.shared = self
        try:
            loaded = unpickler.load()
            if digest is not None:
                self._carried[digest] = self._loading
        finally:
            self._loading = []
        return loaded

    def loads_arguments(self, payload: Any, buffers: Sequence[Any]) -> Any:
        """Unpickle a chunk's arguments.  A function among them keeps globals of its own
        (it may outlive the chunk, in a task's registry or thread); what code on this
        worker set in its module's namespace (an initializer, ``run_on_all``, an export)
        is copied in as it is now, by :meth:`apply`'s rule: it sees that as a
        ``multiprocessing`` worker's function would, and the namespace is not changed."""
        unpickler = _ArgumentsUnpickler(io.BytesIO(payload), buffers=buffers)
        unpickler.shared = self
        return unpickler.load()

    def _argument_function_setstate(self, fn: Any, state: Any) -> None:
        """cloudpickle's ``_function_setstate`` for a function among the arguments, then
        the worker's values of the globals it uses (see :meth:`loads_arguments`)."""
        from cloudpickle import cloudpickle

        ids = state[1]["__globals__"].pop(GLOBAL_IDS, {})
        cloudpickle._function_setstate(fn, state)
        own = fn.__globals__
        module = own.get("__name__")
        namespace = self._namespaces.get(module) if isinstance(module, str) else None
        if namespace is None or namespace is own:
            return
        put, as_put = self._put[id(namespace)], self._as_put[id(namespace)]
        seen = self._master_ids[id(namespace)]
        for name in cloudpickle._extract_code_globals(fn.__code__):
            current = namespace.get(name, _UNSET)
            if current is _UNSET:
                continue
            masters = current is put.get(name, _UNSET)  # (an export's too)
            if name not in own:  # no global of the master's: bound here, or exported
                if not masters or name in self._exports:
                    own[name] = current
                continue
            if name in self._exports:
                continue  # the master's value, as carried, wins over an export
            master_id = ids.get(name)
            rebound = master_id is not None and seen.get(name, master_id) != master_id
            # (the pickle decides only where the master put the name)
            pickled = _small_pickle(own[name]) if masters or name in as_put else None
            if _workers_value_stays(name, current, pickled, rebound, put, as_put):
                own[name] = current

    def apply(self, digest: bytes) -> None:
        """Put what the function ``digest`` carries in its namespaces, before it runs,
        but for the names bound on this worker since the master last put them."""
        for namespace, values, absent, ids, sent in self._carried.get(digest, ()):
            self._set(namespace, values, absent, ids, sent)

    def _set(self, namespace: dict[str, Any], values: dict[str, Any],
             absent: frozenset[str], ids: Mapping[str, int], sent: Sent,
             loading: bool = False) -> None:
        put, as_put = self._put[id(namespace)], self._as_put[id(namespace)]
        seen = self._master_ids[id(namespace)]
        again: dict[str, Any] | None = None  # the small values made again, if they were
        for name in absent:
            if name not in self._exports and namespace.get(name, _UNSET) is put.get(
                    name, _UNSET) is not _UNSET:
                del namespace[name]  # the master's, deleted there since (bound here: stays)
                del put[name]
                as_put.pop(name, None)
                seen.pop(name, None)
        for name, value in values.items():
            master_id = ids.get(name)  # (None: a number or string, or dill's pickle)
            rebound = master_id is not None and seen.get(name, master_id) != master_id
            if master_id is not None:
                seen[name] = master_id
            current = namespace.get(name, _UNSET)
            if current is value:
                continue  # there already
            as_sent = sent.smalls.get(name)
            pickled = as_sent if loading else _small_pickle(value)
            if as_sent is not None and pickled is not None and pickled != as_sent:
                # A task here changed the object this function brought: the master's
                # value is what it sent, made again from the pickle kept then.
                if sent.together is None:
                    values[name] = pickle.loads(as_sent)
                elif again is None:
                    again = pickle.loads(sent.together)
                    values.update(again)
                value, pickled = values[name], as_sent
            if _workers_value_stays(name, current, pickled, rebound, put, as_put):
                as_put.setdefault(name, pickled)  # (what "as it was" is from now on)
                continue
            namespace[name] = put[name] = value
            as_put[name] = pickled

    def is_shared(self, namespace: object) -> bool:
        """Whether ``namespace`` is one of the shared ones (exports reach it by :meth:`export`)."""
        return id(namespace) in self._put

    def export(self, values: dict[str, Any]) -> None:
        """Set ``values`` in every namespace, present and future, as the master's."""
        self._exports.update(values)
        for namespace in self._namespaces.values():
            namespace.update(values)
            self._put[id(namespace)].update(values)
            self._as_put[id(namespace)].update(dict.fromkeys(values))

    def unexport(self, names: list[str]) -> None:
        """Take exported values away from every namespace where the master's still are."""
        for name in names:
            self._exports.pop(name, None)
            for namespace in self._namespaces.values():
                put = self._put[id(namespace)]
                if name in put and namespace.get(name, _UNSET) is put[name]:
                    del namespace[name]
                    del put[name]
                    self._as_put[id(namespace)].pop(name, None)

    def forget(self, digest: bytes) -> None:
        """Drop what only the function ``digest`` carried, where this worker kept it."""
        for namespace, values, _, _, _ in self._carried.pop(digest, ()):
            put = self._put[id(namespace)]
            still = {name for carried in self._carried.values()
                     for other, kept, _, _, _ in carried if other is namespace for name in kept}
            for name in values:
                if name in still or name in self._exports:
                    continue
                current = namespace.get(name, _UNSET)
                if current is not _UNSET and current is put.get(name, _UNSET):
                    # The master's (this function's value, or one that another, forgotten
                    # before, put there): it goes.  Bound here: it stays.
                    del namespace[name]
                    # (while a worker's own value stays, its master id tells a rebind)
                    self._master_ids[id(namespace)].pop(name, None)
                put.pop(name, None)
                self._as_put[id(namespace)].pop(name, None)

    def _namespace(self, name: object) -> dict[str, Any] | None:
        if not isinstance(name, str):
            return None
        namespace = self._namespaces.get(name)
        if namespace is None:
            # A module's own dict: the script may also refer to the module itself.
            module = self._modules[name] = types.ModuleType(name)
            namespace = module.__dict__
            namespace.update(__builtins__=builtins, **self._exports)
            self._namespaces[name] = namespace
            self._put[id(namespace)] = dict(self._exports)
            self._as_put[id(namespace)] = dict.fromkeys(self._exports)
            self._master_ids[id(namespace)] = {}
        return namespace

    def module(self, name: str, state: dict[str, Any]) -> types.ModuleType:
        """cloudpickle's ``dynamic_subimport``: a module shipped by value that code refers
        to as a module (``mycache.CACHE``) is the one whose namespace its functions
        share, its values put there by :meth:`apply`'s rule."""
        namespace = self._namespace(name)
        assert namespace is not None
        carried: Carried = (namespace, dict(state), frozenset(), {}, _as_sent(state))
        self._loading.append(carried)
        self._set(*carried, loading=True)
        return self._modules[name]

    def make_function(self, code: Any, base: Any, name: str, defaults: Any, closure: Any
                      ) -> Any:
        """cloudpickle's ``_make_function``, around the module's shared namespace."""
        if type(base) is dict:  # cloudpickle's fresh globals (a bind_to_env namespace is not)
            shared = self._namespace(base.get("__name__"))
            if shared is not None:
                for key, value in base.items():  # __package__, __name__, __path__, __file__
                    if shared.get(key) is None:  # (a new module's __package__ is None)
                        shared[key] = value
                base = shared
        from cloudpickle import cloudpickle  # imported already: it wrote the payload

        return cloudpickle._make_function(code, base, name, defaults, closure)

    def function_setstate(self, fn: Any, state: Any) -> None:
        """cloudpickle's ``_function_setstate``, putting the globals it carries by
        :meth:`apply`'s rule (now too: the pickle may call it, a reducer say)."""
        from cloudpickle import cloudpickle

        captured = state[1]["__globals__"]
        ids = captured.pop(GLOBAL_IDS, {})
        if self.is_shared(fn.__globals__):
            # cloudpickle carries each global name the code uses that the master had.
            absent = frozenset(cloudpickle._extract_code_globals(fn.__code__)) - captured.keys()
            carried: Carried = (fn.__globals__, dict(captured), absent, ids,
                                _as_sent(captured))
            self._loading.append(carried)
            self._set(*carried, loading=True)
            captured.clear()

        cloudpickle._function_setstate(fn, state)


def _workers_value_stays(name: str, current: Any, pickled: Small | None, rebound: bool,
                         put: dict[str, Any], as_put: dict[str, Small | None]) -> bool:
    """Whether the worker's value of ``name`` (``current``) stays over the master's that
    a function carries (``pickled``: its small pickle, or None): the worker bound the
    name since the master last put it, or changed that value in place (an initializer
    filling a dict), while the master's is as it was then (not bound anew, ``rebound``;
    not another small pickle)."""
    if rebound or (pickled is not None and name in as_put and pickled != as_put[name]):
        return False  # the master's changed
    return current is not put.get(name, _UNSET) or (
        current is not _UNSET and pickled is not None and pickled == as_put.get(name))


#: The largest value whose pickle is kept to tell whether the master changed it.
SMALL_PICKLE = 64 * 1024


class _TooLarge(Exception):
    pass


class _CappedStream(io.BytesIO):
    """Stops a pickle (the pickler writes a frame at a time) once it outgrows the cap."""

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > SMALL_PICKLE:
            raise _TooLarge
        return super().write(data)


#: The ``__main__`` classes small pickles name, by id (held: an id stays theirs).
_MAIN_CLASSES: dict[int, type] = {}


def _main_class(number: int) -> type:
    """A ``__main__`` class a small pickle names (see :class:`_PlainPickler`)."""
    return _MAIN_CLASSES[number]


class _PlainPickler(pickle.Pickler):
    """Never imports: a function or class is written by name, and looking it up imports
    its module, which here may be one meant to travel by value; only those of modules
    loaded already pickle (a ``defaultdict``, a NumPy scalar).  A ``__main__`` class is
    written by identity: one defined again (a notebook cell run again) keeps its name,
    and one cloudpickle made need not be bound in this ``__main__`` at all."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            module = getattr(obj, "__module__", None)
            if module == "__main__" and isinstance(obj, type):  # (a function is made
                _MAIN_CLASSES[id(obj)] = obj  # anew per payload: by name, as before)
                return _main_class, (id(obj),)
            if module not in sys.modules:
                raise _TooLarge
        return NotImplemented


def _small_pickle(value: Any) -> Small | None:
    """``value``'s pickle if it is small and plain data; else None (a large buffer, code,
    something only cloudpickle can write, or more than :data:`SMALL_PICKLE` bytes)."""
    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raise _TooLarge

    stream = _CappedStream()
    try:
        _PlainPickler(stream, 5, buffer_callback=out_of_band).dump(value)
    except Exception:  # _TooLarge, or a function shipped by value, a module...
        return None
    return stream.getvalue()


def _as_sent(values: dict[str, Any]) -> Sent:
    """The small values among ``values``, pickled as the master sent them: a task may
    change the object in place, and a later call may bring the same payload again."""
    smalls = {name: small for name, value in values.items()
              if (small := _small_pickle(value)) is not None}
    together = None
    if len(smalls) > 1:
        stream = io.BytesIO()
        with contextlib.suppress(Exception):  # (each pickled alone: so do they together)
            _PlainPickler(stream, 5).dump({name: values[name] for name in smalls})
            together = stream.getvalue()
    return Sent(smalls, together)


class _Unpickler(pickle.Unpickler):
    shared: SharedGlobals

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("cloudpickle"):
            if name == "_make_function":
                return self.shared.make_function
            if name == "_function_setstate":
                return self.shared.function_setstate
            if name == "dynamic_subimport":
                return self.shared.module
        return super().find_class(module, name)


class _ArgumentsUnpickler(pickle.Unpickler):
    shared: SharedGlobals

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("cloudpickle") and name == "_function_setstate":
            return self.shared._argument_function_setstate
        return super().find_class(module, name)
