"""``sockpool.Pool``: ``multiprocessing.pool.Pool``'s API on a sockpool cluster.

Changing ``from multiprocessing import Pool`` to ``from sockpool import Pool`` is the
whole port: the same methods, results, errors and lifetime rules, with functions that
travel by value (closures, lambdas, ``__main__`` and notebook functions, which spawn
cannot send), output relayed, workers on ssh hosts or Slurm (``Cluster`` keywords).

How each call runs: ``map``/``starmap`` are ``par_map``/``par_starmap`` on the
caller's thread, except that each chunk is sent as soon as it is serialized (as
multiprocessing's task thread feeds its workers) and a failure is raised once
every chunk is done; ``map_async``/``starmap_async`` the same on a thread of
their own; ``apply_async`` is ``Cluster.submit``; the imaps are ``Cluster.imap``,
read by a thread of their own.  Every asynchronous outcome is completed by the
pool's result handler thread (:mod:`.mp_results`), where callbacks run.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from ..common.calls import BoxedCall
from ..errors import CaptureError, ClusterClosedError, RemoteTraceback, add_note
from .cluster import Cluster
from .map_options import MapOptions, as_sequence, check_callable, check_iterables
from .mp_cluster import check_given_cluster, start_cluster
from .mp_results import (
    ApplyResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    ResultHandler,
    Tracker,
    settle_from_future,
)
from .readers import readers

T = TypeVar("T")

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


class Pool:
    """A drop-in for ``multiprocessing.Pool`` whose workers are a sockpool cluster.

    ::

        from sockpool import Pool

        with Pool(4) as pool:
            squares = pool.map(lambda x: x * x, range(10))   # a lambda works

    Args:
        processes: local workers (default: :func:`~sockpool.detect_cores`; with ``hosts=``, none).
        initializer: called as ``initializer(*initargs)`` in every worker when it
            starts, replacement workers included (``Cluster(setup=...)``).
        initargs: the initializer's arguments.
        maxtasksperchild: replace a worker by a fresh process after this many
            tasks (``Cluster(max_tasks_per_worker=...)``; a task is a chunk, as in
            ``multiprocessing``).
        cluster: run on this existing :class:`Cluster` instead of starting one;
            the pool does not own it: ``close``, ``terminate`` and ``join`` leave
            it running.
        cluster_kwargs: other :class:`Cluster` keyword arguments (``hosts=``,
            ``launcher=``, ``relay=``, ``seed=``...).

    Failures are as in ``multiprocessing``: a map whose task fails lets its
    other chunks finish, then raises the first failure.  What cannot be
    serialized raises the pickler's own exception (``map``; an asynchronous
    call's ``get()`` or the imap's ``next()``, and ``error_callback`` gets it),
    with a note naming the argument or the path to what cannot travel.

    Differences a port may notice: a map stops at an argument that cannot be
    pickled (the chunks after it are never sent, those running are cancelled);
    ``imap``'s default ``chunksize`` grows chunks from measured task times;
    after ``terminate()`` unfinished results raise ``ClusterClosedError``
    instead of never becoming ready.

    Raises:
        ValueError: ``processes`` < 1, a bad ``maxtasksperchild``, or keywords
            that contradict each other; before any worker starts.
        TypeError: ``initializer`` is not callable, or an unknown keyword.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        cluster: Cluster | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        if cluster is None:
            self._cluster = start_cluster(processes, initializer, initargs, maxtasksperchild,
                                           cluster_kwargs)
            self._owned = True
        else:
            check_given_cluster(cluster, processes, initializer, maxtasksperchild,
                                 cluster_kwargs)
            self._cluster = cluster
            self._owned = False
        self._processes = max(1, self._cluster.n_workers)
        self._lock = threading.Lock()
        self._tracker = Tracker()
        self._handler = ResultHandler("sockpool-pool-results")
        self._finalizer = weakref.finalize(
            self, _at_collection, self._tracker, self._handler,
            self._cluster if self._owned else None, repr(self))
        self._finalizer.atexit = False  # at exit, the cluster's own exit hook closes it

    @property
    def _state(self) -> str:
        """``RUN``, ``CLOSE`` or ``TERMINATE``, as ``multiprocessing.Pool._state``."""
        return self._tracker.pool_state

    @_state.setter
    def _state(self, state: str) -> None:
        self._tracker.pool_state = state

    @property
    def cluster(self) -> Cluster:
        """The cluster the pool runs on."""
        return self._cluster

    # -- lifetime ----------------------------------------------------------------------

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.terminate()  # as multiprocessing does: unfinished work is stopped

    def close(self) -> None:
        """Take no more work; the workers stop once what was submitted is done."""
        with self._lock:
            if self._state != RUN:
                return
            self._state = CLOSE
        for item in self._tracker.pending():
            wake = getattr(item, "_wake", None)
            if wake is not None:
                wake()  # an imap's reader waiting for its caller: join waits for it all
        if self._owned:
            drain = functools.partial(self._cluster.shutdown, wait=False)
            self._tracker.on_idle = drain
            if self._tracker.idle:
                drain()

    def terminate(self) -> None:
        """Stop now: unfinished tasks are interrupted, their results fail, workers end.

        Callbacks no longer run.  A pool given ``cluster=`` leaves that cluster
        running; its tasks already running finish there, unreported.
        """
        with self._lock:
            if self._state == TERMINATE:
                return
            self._state = TERMINATE
        self._tracker.terminated.set()
        for item in self._tracker.pending():
            cancel = getattr(item, "_cancel", None)
            if cancel is not None:
                cancel()  # a task not started yet does not start
            abort = getattr(item, "_abort", None)
            if abort is not None:
                abort(ClusterClosedError("the pool was terminated before this task finished"))
        self._handler.stop(wait=False)
        if self._owned:
            self._cluster.close()
        self._finalizer.detach()

    def join(self) -> None:
        """Wait for the pool's work (and callbacks) to finish and its workers to end.

        Raises:
            ValueError: the pool is still running (call ``close`` or ``terminate`` first).
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state == CLOSE and self._handler.is_current:  # (multiprocessing's waits)
            raise RuntimeError("join() in a callback of this pool would wait for that "
                               "callback to end; join once it has returned")
        if self._state == CLOSE:
            self._tracker.wait_idle()
        self._handler.stop(wait=True)
        if self._owned:
            if self._state == CLOSE:
                self._cluster.shutdown(wait=True)
            else:
                self._cluster.close()
        self._finalizer.detach()

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    @contextlib.contextmanager
    def _sync_call(self) -> Iterator[None]:
        """Count a blocking call in flight, so that ``join`` waits for it."""
        token = object()
        self._tracker.add(token)
        try:
            yield
        finally:
            self._tracker.discard(token)

    # -- single calls -----------------------------------------------------------------

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] | None = None) -> T:
        """``func(*args, **kwds)`` on a worker; blocks until it returns."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> ApplyResult[T]:
        """Start ``func(*args, **kwds)`` on a worker; returns an ``AsyncResult``.

        ``callback(value)`` or ``error_callback(exception)`` runs in this
        process, on the pool's result thread, before the result is ready.
        """
        self._check_running()
        check_callable(func, "apply_async", returns=False)
        _check_callbacks(callback, error_callback)
        problem = _not_arguments(func, args, kwds)
        call = ((tuple(args), dict(kwds) if kwds is not None else {}) if problem is None
                else ((), {}))  # (not `kwds or {}`: a pandas Series refuses bool())
        result: ApplyResult[T] = ApplyResult(
            self._tracker, callback, error_callback, self,
            self._handler if callback is not None or error_callback is not None else None)
        if problem is not None:  # as multiprocessing's worker fails the call: from get()
            self._settle(result, problem)
            return result
        try:
            # Cluster.submit less the checks made above; every keyword goes to func,
            # timeout= and seed= included (they are Cluster.submit's own keywords).
            self._cluster._check_open()
            future, _ = self._cluster._calls.submit(func, *call, None, None)
        except CaptureError as exc:  # as multiprocessing: from get(), and error_callback
            self._settle(result, _as_multiprocessing_raises(exc))
            return result
        except BaseException as exc:
            result._abort(exc)
            raise
        result._cancel = future.cancel
        future.add_done_callback(settle_from_future(result, self._handler))
        return result

    def _settle(self, result: ApplyResult[Any], error: BaseException) -> None:
        """Fail a call that never went out: on the result thread where its
        error_callback runs, else at once (a callback may wait for it then)."""
        if result._handler is not None:
            self._handler.post(functools.partial(result._complete, False, error))
        else:
            result._complete(False, error)

    # -- maps -------------------------------------------------------------------------

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[T]:
        """``[func(x) for x in iterable]`` in parallel; once every chunk is done, the
        first failure raises."""
        self._check_running()
        check_callable(func, "map", returns=False)
        check_iterables((iterable,), "map")
        with self._sync_call():
            return self._list_map(func, iterable, chunksize, star=False)

    def starmap(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[T]:
        """``[func(*args) for args in iterable]`` in parallel."""
        self._check_running()
        check_callable(func, "starmap", returns=False)
        check_iterables((iterable,), "starmap")
        with self._sync_call():
            return self._list_map(func, iterable, chunksize, star=True)

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """Start a ``map``; returns a ``MapResult`` whose ``get()`` is the list."""
        return self._map_async("map_async", func, iterable, chunksize, callback,
                               error_callback, star=False)

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """Start a ``starmap``; returns a ``MapResult``."""
        return self._map_async("starmap_async", func, iterable, chunksize, callback,
                               error_callback, star=True)

    def _map_async(self, method: str, func: Callable[..., T], iterable: Iterable[Any],
                   chunksize: int | None, callback: Callable[[list[T]], object] | None,
                   error_callback: Callable[[BaseException], object] | None, *, star: bool
                   ) -> MapResult[T]:
        self._check_running()
        check_callable(func, method, returns=False)
        check_iterables((iterable,), method)
        _check_callbacks(callback, error_callback)
        MapOptions(chunksize)  # a bad chunksize raises here, not in get()
        items = as_sequence((iterable,))  # read now, as multiprocessing does
        result: MapResult[T] = MapResult(self._tracker, callback, error_callback, self,
                                         self._handler)
        # The map on a thread of its own: serializing, like multiprocessing's pickling,
        # happens there, and a function that cannot travel fails the result, not the call.
        readers.run(_read_map, functools.partial(self._list_map, func, items, chunksize,
                                                   star=star), result, self._handler)
        return result

    def _list_map(self, func: Callable[..., T], iterable: Iterable[Any],
                  chunksize: int | None, *, star: bool) -> list[T]:
        """``par_map`` (or ``par_starmap``) less the checks made by the caller, as
        multiprocessing maps: each chunk sent as soon as it is serialized, and a
        failure raised once every chunk is done."""
        self._cluster._check_open()
        try:
            return self._cluster._calls.as_list(func, (iterable,), MapOptions(chunksize),
                                                star, as_pool=True)
        except CaptureError as exc:
            error = _as_multiprocessing_raises(exc)
            raise error from error.__cause__

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any],
             chunksize: int | None = None) -> IMapIterator[T]:
        """Results in input order, as they come; ``next(timeout)`` waits at most that.

        The input is read as workers free up, at most 1 024 results ahead of your
        loop (an endless one works; once the pool is closed, every result is
        computed for ``join``).  Without
        ``chunksize``, chunks grow from 1 (a list of quick tasks: as ``map`` cuts
        it) to about 20 ms of work.  A failed task raises at its place, and
        iterating on continues after it."""
        return self._imap("imap", func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any],
                       chunksize: int | None = None) -> IMapIterator[T]:
        """Like :meth:`imap`, in the order results finish."""
        return self._imap("imap_unordered", func, iterable, chunksize, ordered=False)

    def _imap(self, method: str, func: Callable[[Any], T], iterable: Iterable[Any],
              chunksize: int | None, *, ordered: bool) -> IMapIterator[T]:
        self._check_running()
        check_callable(func, method, returns=False)
        check_iterables((iterable,), method)
        results: IMapIterator[T] = (IMapIterator if ordered else IMapUnorderedIterator)(
            self._tracker, self)
        if chunksize is None and self._owned and self._cluster._dispatcher.pool.max_tasks:
            chunksize = 1  # maxtasksperchild counts chunks: multiprocessing's imap's are of 1
        try:
            # An input that raises: the results of what was read before it, then its error.
            stream = self._cluster.imap(BoxedCall(func), iterable,
                                        ordered=ordered, chunksize=chunksize, errors="return")
        except CaptureError as exc:  # as multiprocessing: raised by next()
            results._finish(_as_multiprocessing_raises(exc))
            return results
        except BaseException:
            results._finish()
            raise
        readers.run(_read_imap, stream, results, self._tracker)
        return results

    # -- the rest of multiprocessing's surface ----------------------------------------

    def __repr__(self) -> str:
        return f"<sockpool.Pool state={self._state} pool_size={self._processes}>"

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or "
                                  "pickled: does a task function refer to the pool?")


def _check_callbacks(callback: object, error_callback: object) -> None:
    for name, value in (("callback", callback), ("error_callback", error_callback)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")


def _read_map(run: Callable[[], list[Any]], result: MapResult[Any], handler: ResultHandler
              ) -> None:
    try:
        values = run()
    except BaseException as exc:
        handler.post(functools.partial(result._complete, False, exc))
        return
    handler.post(functools.partial(result._complete, True, values))


def _read_imap(results: Iterator[Any], iterator: IMapIterator[Any], tracker: Tracker) -> None:
    try:
        for value in results:
            iterator._put(value)
            if tracker.terminated.is_set():
                break
            iterator._wait_for_room()
    except CaptureError as exc:  # an item that cannot travel
        iterator._finish(_as_multiprocessing_raises(exc))
        return
    except BaseException as exc:
        iterator._finish(exc)
        return
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the job (a break above: terminated)
    iterator._finish()


def _not_arguments(func: Callable[..., Any], args: object, kwds: object) -> TypeError | None:
    """The ``TypeError`` Python raises for ``func(*args, **kwds)`` where ``args`` is
    not iterable or ``kwds`` not a mapping (multiprocessing's worker raises it), or None."""
    if not (hasattr(type(args), "__iter__") or hasattr(type(args), "__getitem__")):
        return TypeError(f"{_function_str(func)} argument after * must be an iterable, "
                         f"not {type(args).__name__}")
    if kwds is not None and not hasattr(type(kwds), "keys"):
        return TypeError(f"{_function_str(func)} argument after ** must be a mapping, "
                         f"not {type(kwds).__name__}")
    return None


def _function_str(func: object) -> str:
    """How CPython names a callable in a call's error (``_PyObject_FunctionStr``)."""
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return str(func)
    module = getattr(func, "__module__", None)
    return f"{qualname}()" if module in (None, "builtins") else f"{module}.{qualname}()"


def _as_multiprocessing_raises(error: CaptureError) -> BaseException:
    """What multiprocessing raises where sockpool raises ``CaptureError`` while
    serializing a call: the pickler's own exception (``TypeError: cannot pickle
    '_thread.lock' object``), with sockpool's description of what cannot travel,
    and where, as a note.  A task's own ``CaptureError`` (its cause the worker's
    traceback) stays as it is."""
    cause = error.__cause__
    if cause is None or isinstance(cause, RemoteTraceback):
        return error
    add_note(cause, str(error))
    return cause


def _at_collection(tracker: Tracker, handler: ResultHandler, owned: Cluster | None,
                   description: str) -> None:
    """A pool dropped without ``terminate``/``join``: as ``multiprocessing``, stop it
    (with a ``ResourceWarning`` if it was still running)."""
    try:  # (warnings made errors, -W error or pytest's, must not keep the workers)
        if tracker.pool_state == RUN:
            warnings.warn(f"unclosed running {description}; use 'with Pool(...)' or call "
                          "close() and join()", ResourceWarning, stacklevel=2)
    finally:
        tracker.terminated.set()
        handler.stop(wait=False)
        if owned is not None:
            owned.close()
