"""The joblib backend on a cluster: batches as ``submit``s, ``n_jobs`` as slots, aborts.

See :mod:`sockpool.joblib` for what it does, as a user sees it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.parallel import BatchedCalls

from ..api.callbacks import CallbackThread
from ..api.calls import Calls
from ..api.cluster import Cluster
from ..api.plan import current_plan
from ..dispatch.jobs import Job
from ..errors import CaptureError, add_note
from .batches import (
    Initializer,
    batch_functions,
    batch_name,
    initializer_of,
    run_batch,
    run_batch_initialized,
)

_log = logging.getLogger(__name__)

# -- the cluster used when none is given ---------------------------------------------


def plan_cluster() -> Cluster | None:
    """The plan's cluster (started if need be), or None where the plan is sequential.

    The one place that chooses where joblib work runs when ``cluster=`` is
    not given: ``sockpool.plan()``, ``SOCKPOOL_PLAN`` or the default; inside a
    task the plan is sequential.
    """
    active = current_plan()
    return None if active.sequential else active.cluster()


def _check_cluster(cluster: object) -> Cluster | None:
    if cluster is not None and not isinstance(cluster, Cluster):
        raise TypeError(f"the sockpool joblib backend's cluster= must be a sockpool.Cluster or "
                        f"None (the default cluster), not {type(cluster).__name__} "
                        f"({cluster!r:.60})")
    return cluster


# -- completion callbacks --------------------------------------------------------------


_callbacks = CallbackThread("sockpool-joblib")  # joblib's, in order, off the I/O thread


class _Slots:
    """A ``Parallel`` call's ``n_jobs``: how many of its batches are sent at once.

    joblib keeps ``pre_dispatch`` batches in flight (``2 * n_jobs``), and a
    cluster runs every one it has a worker for; those over ``size`` wait here,
    in order.  With ``prefetch`` a worker may hold a batch queued behind the one
    it runs (see :meth:`SockpoolBackend.configure`).
    """

    def __init__(self, size: int, prefetch: bool = False) -> None:
        self.free = size
        self.prefetch = prefetch
        self.waiting: collections.deque[tuple[Callable[[], Any], Future[Any]]] = (
            collections.deque())
        self.lock = threading.Lock()

    def take(self, func: Callable[[], Any], future: Future[Any]) -> bool:
        """True: send ``func`` now; False: it waits its turn, ``future`` still pending."""
        with self.lock:
            if self.free:
                self.free -= 1
                return True
            self.waiting.append((func, future))
            return False

    def give_back(self) -> tuple[Callable[[], Any], Future[Any]] | None:
        """A batch ended: the one waiting to take its slot, or None (the slot is free)."""
        with self.lock:
            if self.waiting:
                return self.waiting.popleft()
            self.free += 1
            return None

    def drop_waiting(self) -> list[Future[Any]]:
        """The futures of the batches still waiting, which will not be sent."""
        with self.lock:
            dropped = [future for _, future in self.waiting]
            self.waiting.clear()
            return dropped


def _follow(done: Future[Any], follower: Future[Any]) -> None:
    """Settle ``follower`` as ``done`` ended (on the I/O thread: never raises)."""
    with contextlib.suppress(InvalidStateError):
        if done.cancelled():
            follower.cancel()
        elif (error := done.exception()) is not None:
            follower.set_exception(error)
        else:
            follower.set_result(done.result())


def _first_call_that_cannot_travel(calls: Calls, batch: BatchedCalls) -> CaptureError | None:
    """The error of the batch's first call that cannot travel, named as
    ``Cluster.submit`` names it (the path to what fails, from its function or
    argument), where the batch's own names only the batch."""
    # Without the size limit, which a batch's functions are not held to: only what
    # cannot be pickled failed the batch.
    packer = dataclasses.replace(calls.packer, max_capture_size=None)
    for function, args, kwargs in batch.items:
        try:
            packer.function(function)
            packer.call(tuple(args), dict(kwargs))
        except CaptureError as error:
            add_note(error, f"sockpool: in the joblib call {batch_name([function])}(...)")
            return error
    return None


# -- the backend -----------------------------------------------------------------------


class SockpoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``ParallelBackendBase`` on a sockpool :class:`~sockpool.Cluster`.

    Registered as ``"sockpool"`` when :mod:`sockpool.joblib` is imported; joblib
    passes ``parallel_config(backend="sockpool", cluster=cl)``'s ``cluster`` here.

    Args:
        cluster: the cluster to run on (the caller keeps it open and closes
            it); None for the plan's (:func:`plan_cluster`).
        initializer: run as ``initializer(*initargs)`` on each worker before its
            first batch, unless they were the last it ran (as loky reuses its
            workers): what it sets stays on the worker.

    Raises:
        TypeError: ``cluster`` is not a :class:`~sockpool.Cluster`, ``initializer``
            is not callable or ``initargs`` not a sequence.
    """

    # A cluster is there to be used: Parallel(n_jobs=None) under this backend
    # takes every worker, as joblib's dask backend does.
    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_inner_max_num_threads = True  # to say, in configure, what to use instead
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, cluster: Cluster | None = None, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: Any = (),
                 **backend_kwargs: Any) -> None:
        if backend_kwargs:
            raise TypeError(f"the sockpool joblib backend takes cluster=, initializer= and "
                            f"initargs=, not {', '.join(map(repr, backend_kwargs))}")
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        self.cluster = _check_cluster(cluster)
        self.initializer = initializer_of(initializer, initargs)
        # Those given to single calls, Parallel(initializer=f), by call.
        self._call_initializers: weakref.WeakKeyDictionary[Any, Initializer] = (
            weakref.WeakKeyDictionary())
        # The clusters given to single calls, Parallel(cluster=cl), by call: an
        # instance set by parallel_config serves every call in its block.
        self._call_clusters: weakref.WeakKeyDictionary[Any, Cluster] = (
            weakref.WeakKeyDictionary())
        # The batches not finished, with the Parallel call that sent each (an
        # instance set by parallel_config serves every call in its block) and
        # the cluster that runs it.
        self._jobs: dict[Job, tuple[object, Calls]] = {}
        self._jobs_lock = threading.Lock()
        self._slots: weakref.WeakKeyDictionary[Any, _Slots] = weakref.WeakKeyDictionary()

    def __reduce__(self) -> Any:
        # Tasks get get_nested_backend()'s sequential backend, never this one.
        raise TypeError("the sockpool joblib backend holds a cluster and cannot be pickled")

    def _given(self, call: Any) -> Cluster | None:
        """The cluster given for the ``Parallel`` call ``call``: its own, else the backend's."""
        given = self._call_clusters.get(call) if call is not None else None
        return given if given is not None else self.cluster

    def _cluster(self, call: Any = None) -> Cluster | None:
        """The cluster of the ``Parallel`` call ``call``: the one given, else the plan's."""
        given = self._given(call)
        return given if given is not None else plan_cluster()

    def effective_n_jobs(self, n_jobs: int | None, call: Any = None) -> int:
        """``n_jobs``, negative values counted back from the cluster's size (-1: all).

        The size is the number of workers the cluster was made with, not how
        many are connected now (one may be starting, or being replaced).  1
        under a sequential plan (without ``cluster=``): the calls run here.
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if call is None:  # a Parallel used as a context manager asks without saying
            call = getattr(self, "parallel", None)
        if self._sequential(call):
            return 1
        if n_jobs < 0:
            cluster = self._cluster(call)
            return 1 if cluster is None else max(_size(cluster) + 1 + n_jobs, 1)
        return int(n_jobs)

    def _sequential(self, call: Any) -> bool:
        return self._given(call) is None and current_plan().sequential

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, cluster: Cluster | None = None,
                  **backend_kwargs: Any) -> int:
        """Check the call's settings; the number of batches to keep in flight is joblib's.

        ``Parallel(backend="sockpool", cluster=cl)`` gives the cluster for that call,
        ``Parallel(initializer=f, initargs=args)`` its initializer.  ``n_jobs=1``
        runs in this process (joblib's sequential backend), as loky's does; any
        other value runs on the cluster, even where it counts back to one worker
        (``-1`` on a cluster of one).
        """
        given = _check_cluster(cluster)
        if given is not None and parallel is not None:
            self._call_clusters[parallel] = given
        elif given is not None:
            self.cluster = given
        initializer = initializer_of(backend_kwargs.get("initializer"),
                                     backend_kwargs.get("initargs", ()))
        if initializer is not None and parallel is not None:
            self._call_initializers[parallel] = initializer
        elif initializer is not None:
            self.initializer = initializer
        if self.inner_max_num_threads is not None:
            raise ValueError(
                f"the sockpool joblib backend does not take inner_max_num_threads="
                f"{self.inner_max_num_threads}: its workers' threads are set as the cluster "
                "starts, by Cluster(threads_per_worker=...) (1 by default: BLAS, OpenMP and "
                "joblib's own count)")
        effective = self.effective_n_jobs(n_jobs, parallel)
        if n_jobs == 1 or self._sequential(parallel):
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        if parallel is not None:
            # With n_jobs at least the cluster's workers, no more than n_jobs batches
            # can run at once however many are sent: each worker may then hold one
            # more, queued, rather than wait a round trip for it after each batch.
            cluster = self._cluster(parallel)
            prefetch = cluster is not None and effective >= _size(cluster)
            with self._jobs_lock:
                self._slots[parallel] = _Slots(2 * effective if prefetch else effective,
                                               prefetch)
        return max(effective, 2)  # joblib runs a call of one job here, not on the cluster

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None
               ) -> Future[Any]:
        """Run one batch on the cluster; ``callback(future)`` once it is done.

        With ``n_jobs`` of the call's batches running, it waits its turn here.
        A batch that cannot be sent (an argument that does not pickle, a closed
        cluster) fails its future instead of raising, so that joblib, which may
        call this from the callback thread, reports it as the call's error.
        """
        call = getattr(callback, "parallel", None)
        future: Future[Any] = Future()
        if callback is not None:
            future.add_done_callback(lambda done: _callbacks.schedule(callback, done))
        with self._jobs_lock:
            slots = self._slots.get(call) if call is not None else None
        if slots is None:
            self._start(func, call, future, None)
        elif slots.take(func, future) and not self._start(func, call, future, slots):
            self._ended(call, slots)
        return future

    def _start(self, func: Callable[[], Any], call: Any, future: Future[Any],
               slots: _Slots | None) -> bool:
        """Send one batch, ``future`` to follow it; False when it failed at once."""
        try:
            if getattr(call, "_aborting", False):  # while it waited for a slot
                raise RuntimeError("the joblib call is aborting: this batch is not sent")
            sent, job, calls = self._send(func, call, slots is not None and slots.prefetch)
        except BaseException as exc:
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                future.set_exception(exc)
            return False
        with self._jobs_lock:
            self._jobs[job] = (call, calls)
        sent.add_done_callback(functools.partial(self._finished, job, call, future, slots))
        if getattr(call, "_aborting", False):  # aborted as it was sent: abort_everything
            calls.cancel(job)                  # may have looked before it was registered
        return True

    def _finished(self, job: Job, call: Any, future: Future[Any], slots: _Slots | None,
                  sent: Future[Any]) -> None:
        """A batch ended (I/O thread): settle joblib's future; the next one waiting is
        sent from the callback thread (pickling it here would hold up the I/O)."""
        with self._jobs_lock:
            self._jobs.pop(job, None)
        _follow(sent, future)
        if slots is not None:
            _callbacks.schedule(lambda _: self._ended(call, slots), sent)

    def _ended(self, call: Any, slots: _Slots) -> None:
        """One of ``call``'s batches ended: send those waiting until one is on its way."""
        while (waiting := slots.give_back()) is not None:
            if self._start(waiting[0], call, waiting[1], slots):
                return

    def _send(self, func: Callable[[], Any], call: Any, prefetch: bool = False
              ) -> tuple[Future[Any], Job, Calls]:
        """Submit one batch of the ``Parallel`` call ``call`` through its cluster's
        calls, keeping its job for ``abort_everything`` (``Cluster.submit`` hides it)."""
        cluster = self._cluster(call)
        if cluster is None:  # the plan became sequential during the call
            raise RuntimeError("the sockpool plan changed to 'sequential' during this "
                               "joblib call")
        cluster._check_open()
        calls = cluster._calls
        function: Callable[..., Any] = func
        args: tuple[Any, ...] = ()
        name = call_name = None
        standard_first = True
        initializer = self._call_initializers.get(call) if call is not None else None
        initializer = initializer or self.initializer
        if isinstance(func, BatchedCalls):
            # One function for every batch, by reference (workers cache it), the
            # batch as its argument; a profile and messages name the functions it calls.
            functions = batch_functions(func)
            function, args, name = run_batch, (func,), batch_name(functions)
            if initializer is not None:
                function, args = run_batch_initialized, (func, initializer)
            call_name = f"a joblib batch of {name}"
            # A script's function travels by value: the standard pickler's pass over
            # the batch would be thrown away (2 ms of the caller's per 16k items).
            standard_first = all(getattr(f, "__module__", None) != "__main__"
                                 for f in functions)
        elif initializer is not None:
            function, args = run_batch_initialized, (func, initializer)
        # Without prefetch a batch goes only to an idle worker.  With it, one may
        # queue behind a short batch (the scheduler's horizon), and is taken back
        # for a worker that idles meanwhile (dispatch/reclaims.py).  Unseeded: joblib
        # sizes its batches by their timing, so counting them as seeded calls would
        # change what every later seeded call draws, run to run.
        try:
            future, job = calls.submit(function, args, {}, None, None, prefetch=prefetch,
                                       name=name, call_name=call_name,
                                       standard_first=standard_first, seeded=False)
        except CaptureError:
            found = (_first_call_that_cannot_travel(calls, func)
                     if isinstance(func, BatchedCalls) else None)
            if found is None:
                raise
            raise found from found.__cause__  # (not the batch's error as its context)
        return future, job, calls

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The batch's list of results, or its first task's exception."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the aborting call's batches: drop those queued, interrupt those running.

        Only the batches of ``Parallel`` calls that are aborting: other calls
        sharing this backend (under one ``parallel_config``) go on.  The cluster
        stays up either way (it may be shared), so ``ensure_ready`` needs nothing more.
        """
        with self._jobs_lock:
            aborting = [slots for call, slots in self._slots.items()
                        if getattr(call, "_aborting", True)]
            jobs = [(job, calls) for job, (call, calls) in self._jobs.items()
                    if call is None or getattr(call, "_aborting", True)]
            for job, _ in jobs:
                del self._jobs[job]
        for slots in aborting:
            for future in slots.drop_waiting():
                future.cancel()
        for job, calls in jobs:
            calls.cancel(job)

    def terminate(self) -> None:
        """End of a ``Parallel`` call: reset the batch statistics (the cluster stays up)."""
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """A ``Parallel`` inside a task runs in its worker, one call after another."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


def _size(cluster: Cluster) -> int:
    """The number of workers ``cluster`` was made with (some may not be connected yet)."""
    return max(cluster._dispatcher.target, cluster.n_workers)

