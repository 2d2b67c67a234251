"""What runs on a worker for the joblib backend, and how batches are named.

The backend sends these functions by reference, so that a worker imports
:mod:`sockpool.joblib`, which registers the backend: a ``Parallel(backend=
"sockpool")`` inside a batch finds it even where the user's module that
imported it traveled by value.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle
from joblib.parallel import BatchedCalls


@dataclasses.dataclass(frozen=True)
class Initializer:
    """A ``Parallel`` call's ``initializer(*initargs)``, and the digest of both pickled: a
    worker runs it before its first batch of a call, unless the last one it ran had the
    same digest (a loky worker runs it as it starts, and is reused by the next call
    with the same ones)."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    key: bytes


def initializer_of(initializer: object, initargs: object) -> Initializer | None:
    """joblib's ``initializer=``/``initargs=``, checked and named by their contents."""
    if initializer is None:
        return None
    if not callable(initializer):
        raise TypeError(f"the sockpool joblib backend's initializer= must be callable, not "
                        f"{type(initializer).__name__} ({initializer!r:.60})")
    if isinstance(initargs, (str, bytes)) or not isinstance(initargs, Iterable):
        raise TypeError(f"the sockpool joblib backend's initargs= must be a tuple of "
                        f"arguments, not {type(initargs).__name__} ({initargs!r:.60})")
    args = tuple(initargs)
    try:
        key = hashlib.blake2b(cloudpickle.dumps((initializer, args)), digest_size=16).digest()
    except Exception:  # (sockpool's own pickling may still send it; if not, the batches say why)
        key = os.urandom(16)  # run again by the next call
    return Initializer(initializer, args, key)


def run_batch(batch: BatchedCalls) -> list[Any]:
    """A batch on a worker."""
    results: list[Any] = batch()
    return results


#: The digest of the initializer this worker ran last (on the workers).
_initialized: list[bytes] = []
_initializing = threading.Lock()


def run_batch_initialized(batch: Callable[[], list[Any]], initializer: Initializer
                          ) -> list[Any]:
    """A batch of a call with an initializer, on a worker: the initializer first,
    unless it was the last this worker ran (a replacement has run none).  The
    initializer is an argument of each batch: a large array among its arguments is
    sent once, as any argument repeated from batch to batch."""
    if initializer.key not in _initialized:
        with _initializing:
            if initializer.key not in _initialized:
                initializer.function(*initializer.args)
                _initialized[:] = [initializer.key]
    return batch()


def batch_functions(batch: BatchedCalls) -> list[Any]:
    """The functions a batch calls, in order, each once where it can be hashed
    (``functools.partial``s unwrapped)."""
    # Each distinct callable once, without a Python loop over the items (most
    # batches call one function): 1.5 ms per 16k items otherwise.
    functions = _distinct(list(map(operator.itemgetter(0), batch.items)))
    return _distinct([function.func if isinstance(function, functools.partial) else function
                      for function in functions])


def _distinct(values: list[Any]) -> list[Any]:
    try:
        return list(dict.fromkeys(values))
    except Exception:  # a callable that cannot be hashed, or compared (array-like __eq__)
        return values


def batch_name(functions: list[Any]) -> str:
    """A batch's functions by name (its profile's name for it)."""
    names = (getattr(function, "__qualname__", None) or type(function).__name__
             for function in functions)
    return ", ".join(dict.fromkeys(names))
