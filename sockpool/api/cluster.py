"""``Cluster``: the public face of a pool of worker processes.

Each call checks its arguments, serializes the function and its arguments
before anything is sent, and posts chunks to the I/O thread; results are
decoded and put in order on the caller's thread (docs/architecture.md).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, TypeVar

# Only what a Cluster needs before its local workers start: the engine (zmq, the
# capture's picklers, the I/O thread) is imported after that (see startup.py).
from ..capture.binding import lookup
from ..capture.limits import DEFAULT_MAX_CAPTURE_SIZE
from ..common.config import DEFAULT_MAX_FRAME_BYTES
from ..errors import ClusterClosedError
from . import aio
from .cluster_options import (
    DEFAULT_THREADS,
    check_cluster_options,
    choose_workers,
    warn_if_oversubscribed,
)
from .lifetime import forget, watch
from .loops import may_block
from .map_options import MapOptions, check_call_options, check_callable, check_iterables, options_of
from .seeding import CallSeeds
from .startup import start_engine

if TYPE_CHECKING:
    from ..common.config import Serializer, Transport
    from ..dispatch.records import WorkerInfo
    from ..launchers import Launcher, SSHHost
    from .map_options import ErrorMode, Schedule
    from .profile import Profile

T = TypeVar("T")
_Cluster = TypeVar("_Cluster", bound="Cluster")  # a subclass entered stays itself


class Cluster(concurrent.futures.Executor):
    """A pool of worker processes that run your functions in parallel.

    Use it as a context manager, so that no worker outlives the block::

        with Cluster(n=4) as cl:
            models = cl.par_map(fit_one, levels)

    Args:
        n: number of local workers (default: :func:`detect_cores`).
        hosts: ssh destinations instead of (or besides) local workers: a list
            where a repeated name means several workers on that host
            (``["node1", "node1", "node2"]``), or a dict ``{"node1": 8,
            "user@node2:2222": 4}`` (values may be :class:`SSHHost` for
            per-host options); names from ``~/.ssh/config`` work.
            ``"localhost"`` means a local worker, no ssh.  See docs/ssh.md.
        tunnel: remote workers connect back through an ``ssh -R`` reverse
            tunnel instead of directly.
        listen: the address of this machine remote workers connect to
            (default: for each host, the local address that routes to it).
        min_workers: accept a partial cluster of at least this many workers
            when some fail to start (a warning names the failures).
        wait_for: return from the constructor once this many workers are up;
            the others join as they connect (default: all of them, or one
            for a :class:`SlurmLauncher`, whose workers may wait in the queue).
            Within ``connect_timeout``, or LaunchError says where they are.
        launcher: an explicit launcher (:class:`LocalLauncher`,
            :class:`SSHLauncher`, :class:`ManualLauncher`).
        python: the interpreter workers run (default: this one locally; on
            remote hosts ``$SOCKPOOL_REMOTE_PYTHON``, else ``python3``).
        env: extra environment variables for the workers.
        setup: a callable run once in every worker when it starts (also in a
            replacement worker), e.g. to import heavy modules.
        threads_per_worker: caps BLAS/OpenMP threads (and joblib's CPUs) per worker.  With the
            default 1, those this process's environment sets stay, and its
            ``OMP_NUM_THREADS`` goes to every pool; a value given (1 too) sets them all.
        seed: root seed of reproducible per-task random streams: the k-th
            seeded call (a map or a submit) since the seed was set gives its
            task i the stream ``SeedSequence(seed, spawn_key=(k, i))``, which
            seeds ``random``, NumPy's global state and :func:`task_rng`.
            Results are then the same for any number of workers or chunk size.
        serializer: ``"cloudpickle"`` (default), ``"dill"`` or ``"pickle"``.
        max_capture_size: bytes a task function may carry (its captured
            globals and closures) before ``CaptureError`` stops the call;
            None for no limit.  Data meant to travel is better passed as
            arguments or sent once with :meth:`export`.
        relay: what workers write (print, sys.stdout/sys.stderr), warn and
            log comes home: ``True`` writes each chunk's output as one block in
            input order when it finishes, ``"live"`` line by line as it is
            written, ``False`` leaves it in the worker (for raw speed).
        relay_prefix: start each relayed line with ``[worker N] ``.
        log_level: the lowest level of worker log records relayed, as a number or a
            name (default: the effective level of this process's root logger now).
        transport: how local workers reach the master: ``"ipc"``, a socket in a
            private 0700 directory (default, faster), or ``"tcp"``, loopback
            TCP encrypted and authenticated with CURVE, a key per worker (see
            docs/security.md).
        max_message_size: the largest frame (or result buffer in shared memory) a
            worker may send, in bytes, at least 64 KiB; one that sends more is disconnected.
        connect_timeout: seconds to wait for the workers to start and connect.
        heartbeat_interval: seconds between heartbeats, both ways (0.01 or more).
        heartbeat_timeout: silence (two heartbeats or more) after which a peer is lost: the master
            gives up on a silent remote worker after 5 heartbeats by default, a
            worker on a silent master after 60 s (local) or 15 s (ssh, Slurm).
        prefetch: chunks a worker may hold: the one it runs and those queued (1-1024).
        max_tasks_per_worker: replace a worker by a fresh process once it ran
            this many tasks (chunks you do not size hold at most that many; a
            static map's, pinned to their workers, run there whatever the count).
        max_worker_memory: replace a worker whose resident memory (less the
            segments results travel in), after a chunk, is above this (bytes, or
            a size such as ``"2GB"``); each worker checks its own, remote ones too.

    Raises:
        ValueError: ``n < 1`` or another bad option.
        LaunchError: a worker could not start or connect in time.
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        hosts: Iterable[str | SSHHost] | Mapping[str, int | SSHHost] | None = None,
        tunnel: bool = False,
        listen: str | None = None,
        min_workers: int | None = None,
        wait_for: int | None = None,
        launcher: Launcher | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        setup: Callable[[], Any] | None = None,
        threads_per_worker: int | None = DEFAULT_THREADS,
        seed: int | None = None,
        serializer: Serializer = "cloudpickle",
        max_capture_size: int | None = DEFAULT_MAX_CAPTURE_SIZE,
        relay: bool | Literal["live"] = True,
        relay_prefix: bool = False,
        log_level: int | str | None = None,
        transport: Transport = "ipc",
        max_message_size: int = DEFAULT_MAX_FRAME_BYTES,
        connect_timeout: float = 60.0,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float | None = None,
        prefetch: int = 2,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
    ) -> None:
        launcher, n_workers, wait_for, min_workers = choose_workers(
            n, hosts, launcher, python=python, env=env, threads_per_worker=threads_per_worker,
            tunnel=tunnel, listen=listen, min_workers=min_workers, wait_for=wait_for)
        options = check_cluster_options(
            setup=setup, threads_per_worker=threads_per_worker, connect_timeout=connect_timeout,
            heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout, seed=seed,
            max_message_size=max_message_size, relay=relay, prefetch=prefetch,
            max_tasks_per_worker=max_tasks_per_worker, serializer=serializer,
            max_capture_size=max_capture_size, transport=transport, relay_prefix=relay_prefix,
            max_worker_memory=max_worker_memory, log_level=log_level)
        warn_if_oversubscribed(n_workers, launcher, chosen=n is not None)
        self.owner_pid = os.getpid()
        self._seeds = CallSeeds(seed)
        self._calls = start_engine(
            launcher, n_workers, setup=setup, serializer=serializer,
            max_capture_size=max_capture_size, seeds=self._seeds, owner=self,
            relay_mode={True: "task", False: "off", "live": "live"}[relay],
            relay_prefix=relay_prefix, transport=transport, **options)
        self._dispatcher = self._calls.dispatcher
        self._finalizer = watch(self, self._dispatcher,
                                f"sockpool.Cluster ({launcher.describe()}, {n_workers} "
                                f"worker{'s' * (n_workers != 1)})")
        self._starting: tuple[int, float, int | None] | None = (
            wait_for, options["connect_timeout"], min_workers)
        if may_block():  # else `async with` waits, without blocking the event loop
            self._wait_started()

    def _wait_started(self) -> None:
        """Wait (once) for the workers the constructor asked for; close on failure."""
        starting, self._starting = self._starting, None
        try:
            if starting is not None:
                self._dispatcher.pool.wait_for_workers(*starting)
        except BaseException:
            self.close()
            raise

    # -- lifetime ----------------------------------------------------------------------

    def __enter__(self: _Cluster) -> _Cluster:
        self._check_open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.close()

    def close(self) -> None:
        """Stop now: cancel pending tasks, interrupt running ones, end every worker.

        Bounded (a few seconds at most: SHUTDOWN, then SIGTERM, then SIGKILL; done-
        callbacks of its futures get 5 s more).  Calling it again is harmless.
        """
        self._finalizer.detach()
        self._dispatcher.close(cancel=True, wait=True)
        forget(self, callbacks_within=5.0)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish what was submitted (``Executor`` contract).

        Args:
            wait: block until every task has finished and the workers are gone.
            cancel_futures: cancel the tasks no worker holds (see the guide's "Futures").
        """
        self._finalizer.detach()
        if cancel_futures:
            with contextlib.suppress(ClusterClosedError):
                self._dispatcher.cancel_futures()
        self._dispatcher.close(cancel=False, wait=wait, timeout=None)
        if wait:
            forget(self, callbacks_within=None)

    def restart(self) -> None:
        """Replace every worker by a fresh process (new pids), e.g. after a leak.

        ``setup`` and exports are applied again; queued tasks run on the new
        workers; running ones fail with ``WorkerLostError`` (or are retried,
        with ``retries``).  Returns once the new workers are ready (else ``LaunchError``).
        """
        self._check_open()
        self._dispatcher.restart()

    def _check_open(self) -> None:
        if os.getpid() != self.owner_pid:  # its I/O thread did not cross the fork
            raise ClusterClosedError(f"this cluster belongs to process {self.owner_pid}; a "
                                     "forked child cannot use it (start one of its own)")
        if self._starting is not None:  # made in an event loop and not awaited yet
            self._wait_started()
        lifecycle = self._dispatcher.lifecycle
        if not lifecycle.takes_work:
            raise lifecycle.refusal()

    def set_seed(self, seed: int | None) -> None:
        """Set (or with None, clear) the root seed; calls are counted afresh from it.

        Raises:
            ValueError: ``seed`` is not a non-negative integer.
            ClusterClosedError: the cluster is closed.
        """
        self._check_open()
        self._seeds.reset(seed)

    # -- maps -------------------------------------------------------------------------

    def par_map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        ordered: bool = True,
        progress: bool = False,
        timeout: float | None = None,
        retries: int = 0,
        errors: ErrorMode = "raise",
        seed: int | None = None,
        schedule: Schedule = "dynamic",
    ) -> list[T]:
        """Apply ``fn`` to every item (to items of several iterables in step) in parallel.

        Args:
            fn: the function; it travels with what it refers to.
            iterables: the arguments; several are zipped, stopping at the shortest.
            chunksize: tasks per message (default: about four chunks per worker,
                fewer for a function whose tasks are known to be short).
            ordered: results in input order (else in the order they finish).
            progress: show a progress bar (needs tqdm).
            timeout: per-task time limit in seconds: a task that runs longer
                fails with ``TaskTimeoutError`` (or is retried, with
                ``retries``) and its worker is stopped and replaced.  Chunks
                are one task each then (``chunksize`` above 1 is refused).
            retries: times a task is re-run when its worker is lost.
            errors: ``"raise"`` the first failure, or ``"return"`` exceptions in place.
            seed: a seed for this call alone: task i gets the stream
                ``SeedSequence(seed, spawn_key=(i,))`` (see ``Cluster(seed=)``).
            schedule: ``"dynamic"``: workers pull chunks as they free up (load
                balancing); ``"static"``: contiguous equal chunks (one per
                worker unless ``chunksize``; single tasks with ``timeout``)
                assigned round-robin up front, in worker id order, as R's
                ``parLapply`` does, so the assignment itself is deterministic.

        Returns:
            The list of results.

        Raises:
            TypeError: ``fn`` is not callable or an argument is not iterable.
            CaptureError: the function or an argument cannot be serialized.
            WorkerLostError: a task's worker died (and ``retries`` ran out).
            ClusterClosedError: the cluster is closed.
        """
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        options = MapOptions(chunksize, ordered, progress, timeout, retries, errors, seed, schedule)
        return self._map_list("par_map", fn, iterables, options, star=len(iterables) > 1)

    def par_starmap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        *,
        chunksize: int | None = None,
        ordered: bool = True,
        progress: bool = False,
        timeout: float | None = None,
        retries: int = 0,
        errors: ErrorMode = "raise",
        seed: int | None = None,
        schedule: Schedule = "dynamic",
    ) -> list[T]:
        """Like :meth:`par_map`, calling ``fn(*args)`` for each tuple ``args``."""
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        options = MapOptions(chunksize, ordered, progress, timeout, retries, errors, seed, schedule)
        return self._map_list("par_starmap", fn, (iterable,), options, star=True)

    def _map_list(self, method: str, fn: Callable[..., T], iterables: tuple[Any, ...],
                  options: MapOptions, *, star: bool) -> list[T]:
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        self._check_open()
        check_callable(fn, method)
        check_iterables(iterables, method)
        return self._calls.as_list(fn, iterables, options, star)

    def imap(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        progress: bool = False,
        timeout: float | None = None,
        retries: int = 0,
        errors: ErrorMode = "raise",
        seed: int | None = None,
    ) -> Iterator[T]:
        """Apply ``fn`` lazily: results as they come, input read as room frees up.

        At most a few chunks per worker are in flight (and, when ``ordered``,
        waiting their turn), so memory stays flat even for an endless input.
        Without ``chunksize`` chunks grow from 1 (over lists, as :meth:`par_map` cuts
        tasks known to be short) to about 20 ms of work; with ``timeout``, 1.  ``timeout``,
        ``retries``, ``errors`` and ``seed`` are as in :meth:`par_map`.  An ordered imap
        yields every result before a failing task, then raises.
        """
        options = MapOptions(chunksize, ordered, progress, timeout, retries, errors, seed)
        self._check_open()
        check_callable(fn, "imap")
        check_iterables(iterables, "imap")
        return self._calls.lazily(fn, iterables, options)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """``Executor.map``: submits everything now; yields results in order.  ``timeout``
        is a deadline for the whole iteration (``TimeoutError`` when it passes)."""
        chunksize = MapOptions(chunksize).chunksize or 1  # checked, and an int
        self._check_open()
        check_callable(fn, "map")
        check_iterables(iterables, "map")
        return self._calls.executor_map(fn, iterables, chunksize, timeout)

    # -- single calls -----------------------------------------------------------------

    def submit(  # type: ignore[override]  # DESIGN.md reserves timeout=, seed=
        self, fn: Callable[..., T], /, *args: Any, timeout: float | None = None,
        seed: int | None = None, **kwargs: Any,
    ) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a ``concurrent.futures.Future``.

        Args:
            timeout: the task's time limit in seconds (``TaskTimeoutError`` past
                it; the worker is stopped and replaced), as in :meth:`par_map`.
            seed: a seed for this call alone (as ``par_map(seed=)``); with
                ``Cluster(seed=)`` an unseeded submit counts as a seeded call.

        ``timeout`` and ``seed`` are sockpool's (it warns where ``fn`` has such a
        parameter); every other keyword goes to ``fn``.  To pass ``fn`` one of
        those, bind it first: ``submit(functools.partial(fn, timeout=5))``.
        """
        self._check_open()
        check_callable(fn, "submit")
        timeout = check_call_options(fn, timeout, seed)  # (as a float)
        return self._calls.submit(fn, args, kwargs, timeout, seed)[0]

    def run_on_all(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> list[T]:
        """Run ``fn(*args, **kwargs)`` once on every worker; one result per worker, by id.

        Like R's ``clusterCall``/``clusterEvalQ``: for per-worker state such as
        imports, connections or caches.
        """
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        self._check_open()
        check_callable(fn, "run_on_all")
        return self._calls.on_all(fn, args, kwargs)

    def export(self, *names: str, env: Mapping[str, Any] | object | None = None,
               **values: Any) -> None:
        """Make values globals on every worker, present and future (R's ``clusterExport``).

        ``export("data", "model")`` looks the names up in the caller's frame
        (or in ``env``); ``export(data=df)`` gives values directly.  Task
        functions shipped from ``__main__`` or a notebook see them as globals.

        Raises:
            NameError: a name is not defined.
            CaptureError: a value cannot be serialized.
        """
        self._check_open()
        self._calls.export({**lookup(names, env, depth=1), **values})

    # -- asyncio: the same calls, awaited (see api/aio.py) -------------------------------

    async def __aenter__(self: _Cluster) -> _Cluster:
        await aio.blocking(self._wait_started, self.close)  # cancelled: the start stops
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await aio.blocking(lambda: self.__exit__(exc_type, exc, tb), self.close)

    async def asubmit(self, fn: Callable[..., T], /, *args: Any, timeout: float | None = None,
                      seed: int | None = None, **kwargs: Any) -> T:
        """:meth:`submit`, awaited.  Cancelling the awaiting task cancels the sockpool
        task, interrupting it if it runs."""
        await aio.check_open(self._check_open, starting=self._starting is not None)
        check_callable(fn, "asubmit")
        timeout = check_call_options(fn, timeout, seed)  # (as a float)
        return await aio.submit(self._calls, fn, args, kwargs, timeout, seed)

    async def apar_map(self, fn: Callable[..., T], *iterables: Iterable[Any],
                       **options: Any) -> list[T]:
        """:meth:`par_map`, awaited (the same keyword options); cancelling the awaiting
        task cancels the map's tasks, interrupting those that run."""
        checked = options_of("apar_map", options)
        await aio.check_open(self._check_open, starting=self._starting is not None)
        check_callable(fn, "apar_map")
        check_iterables(iterables, "apar_map")
        return await aio.as_list(self._calls, fn, iterables, checked)

    def aimap(self, fn: Callable[..., T], *iterables: Iterable[Any],
              **options: Any) -> AsyncIterator[T]:
        """:meth:`imap` for ``async for`` (the same keyword options); leaving the loop
        early, or cancelling the task in it, cancels what is left."""
        checked = options_of("aimap", options)
        if self._starting is None:  # else in the call's thread, once its workers are up
            self._check_open()
        check_callable(fn, "aimap")
        check_iterables(iterables, "aimap")
        return aio.lazily(self._calls, fn, iterables, checked, self._check_open)

    # -- introspection ----------------------------------------------------------------

    @property
    def workers(self) -> tuple[WorkerInfo, ...]:
        """Each live worker: id, host, pid and state."""
        with contextlib.suppress(ClusterClosedError):
            if not self._dispatcher.lifecycle.closed.is_set():
                return tuple(self._dispatcher.snapshot())
        return ()

    @property
    def n_workers(self) -> int:
        """Number of live, connected workers."""
        return self._dispatcher.n_ready
    #: ProcessPoolExecutor's, by which libraries given an executor (dask) size their work.
    _max_workers = property(lambda self: self._dispatcher.target)

    def profile(self) -> Profile:
        """Record every task's worker and times in a ``with`` block: ``with cl.profile() as
        prof: cl.par_map(f, xs)``, then ``prof.plot()``; see :class:`Profile`."""
        self._check_open()
        from .profile import Profile
        return Profile.of_cluster(self._dispatcher)

    def _repr_html_(self) -> str:
        from .cluster_view import cluster_html
        return cluster_html(repr(self), self.workers, self._dispatcher)

    def __repr__(self) -> str:
        state = self._dispatcher.lifecycle.state.value
        return (f"<Cluster {self._dispatcher.launcher.describe()}: {self.n_workers} of "
                f"{self._dispatcher.target} workers, {state}>")

    def __reduce__(self) -> Any:
        raise TypeError("a sockpool Cluster cannot be sent to its workers: does the task "
                        "function refer to the cluster (a global or closure variable)?")
