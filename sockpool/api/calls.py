"""How a cluster's calls run, once ``Cluster`` has checked them: the function and the
arguments serialized, the input cut into chunks, the chunks posted to the I/O thread,
and the results streamed back.  Each call may leave its job in a ``jobs`` list, for
whoever needs to cancel it (an asyncio task that is cancelled)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from ..capture.payload import Packer
from ..common import protocol
from ..common.protocol import Flag
from ..dispatch.dispatcher import Dispatcher
from ..dispatch.jobs import FutureJob, Job, StreamJob
from ..errors import ClusterClosedError, NoWorkersLeftError
from .callbacks import TaskFuture
from .feeds import EagerFeed, LazyFeed, SlicedFeed, eager_chunks, static_chunks
from .map_options import MapOptions, as_sequence, check_deadline, known_length, progress_bar
from .mapping import Delivery, collect_list, iterate, stream_blocks
from .pace import MapTimes, TaskPace
from .seeding import CallSeeds

T = TypeVar("T")


class JobSink(Protocol):
    """Where a call leaves the job it made, for another thread to cancel (see aio)."""

    def append(self, job: Job) -> None:
        """Take the job (may raise, to stop the call before it sends anything)."""


class Calls:
    """The calls of one cluster: its dispatcher, its packer and its seeds."""

    def __init__(self, dispatcher: Dispatcher, packer: Packer, seeds: CallSeeds,
                 owner: Callable[[], object] = lambda: None) -> None:
        self.dispatcher = dispatcher
        self.packer = packer
        self.seeds = seeds
        #: The Cluster (weakly): a call's job keeps it alive while the caller holds the
        #: call's future or iterator, as an Executor lives on for its pending work.
        self.owner = owner
        self.pace = TaskPace()

    def worker_count(self) -> int:
        """Workers to size chunks for: those ready, else those wanted."""
        return max(1, self.dispatcher.n_ready or self.dispatcher.target)

    def as_list(self, fn: Callable[..., T], iterables: tuple[Any, ...], options: MapOptions,
                star: bool, jobs: JobSink | None = None, *, as_pool: bool = False
                ) -> list[T]:
        """``par_map``: every chunk serialized before any is sent; the results as a list.

        ``as_pool``: as ``multiprocessing.Pool.map`` instead: each chunk is sent as
        soon as it is serialized (see :class:`SlicedFeed`), and a failure is raised
        once every chunk is done, the others left to finish (``schedule="static"``,
        which ``Pool`` never asks for, keeps its chunks made up front).
        """
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        items = as_sequence(iterables)
        job = StreamJob(self.packer.function(fn), options.flags(star), options.retries,
                        options.timeout, self.seeds.for_call(options.seed))
        if jobs is not None:
            jobs.append(job)
        if not items:
            return []
        if options.schedule == "static":
            workers = self.dispatcher.live_worker_ids()
            if not workers:
                raise NoWorkersLeftError("the cluster has no worker left")
            chunks = static_chunks(job, items, workers, options.chunksize, self.packer)
            feed: EagerFeed | SlicedFeed = EagerFeed(chunks)
            window = len(chunks)
        else:
            size = self._chunk_size(job, len(items), options)
            times = MapTimes(self.pace, job.function.digest, -(-len(items) // size))
            feed = (SlicedFeed(job, items, size, self.packer, times) if as_pool
                    else EagerFeed(eager_chunks(job, items, size, self.packer), times))
            window = -(-len(items) // size)  # every chunk in flight at once
        delivery = Delivery(blocks_in_order=False, output_in_order=options.ordered,
                            errors=options.errors, fail_fast=not as_pool)
        blocks = stream_blocks(job, feed, delivery, self.dispatcher, window=window,
                               progress=progress_bar(len(items), options.progress))
        return collect_list(blocks, len(items), options.ordered, options.errors)

    def _chunk_size(self, job: StreamJob, items: int, options: MapOptions) -> int:
        """Tasks per chunk of a list map: the options' rule, or larger chunks for a
        function whose tasks are known to be short (see :mod:`.pace`).  A worker
        quota (``maxtasksperchild``, ``max_tasks_per_worker``) keeps the rule exactly,
        within :meth:`_most_per_chunk`."""
        workers = self.worker_count()
        size = options.chunk_size(items, workers)
        if options.chunksize is not None:
            return size
        if options.timeout or self.dispatcher.pool.max_tasks:
            return min(size, self._most_per_chunk() or size)
        return self.pace.chunk_size(job.function.digest, items, workers, size)

    def _most_per_chunk(self) -> int | None:
        """The most tasks a chunk cut here may hold: ``max_tasks_per_worker``, so that
        its quota is not overrun by a chunk (1: each task in a fresh process).  None:
        no limit, nor under ``maxtasksperchild``, which counts chunks."""
        if self.dispatcher.scheduler.quota_counts_chunks:
            return None
        return self.dispatcher.pool.max_tasks

    def _first_lazy_size(self, job: StreamJob, items: int, options: MapOptions) -> int:
        """imap's first chunk over lists of ``items``: one task, or as large as
        :meth:`_chunk_size` would cut tasks known to be short."""
        if options.lazy_chunk_size is not None or self.dispatcher.pool.max_tasks:
            return 1
        return self.pace.chunk_size(job.function.digest, items, self.worker_count(), 1)

    def lazily(self, fn: Callable[..., T], iterables: tuple[Any, ...], options: MapOptions,
               jobs: JobSink | None = None) -> Iterator[T]:
        """``imap``: input read as room frees up, a bounded window of chunks in flight."""
        star = len(iterables) > 1
        items = zip(*iterables, strict=False) if star else iter(iterables[0])
        job = StreamJob(self.packer.function(fn, copy_buffers=True), options.flags(star),
                        options.retries, options.timeout, self.seeds.for_call(options.seed))
        job.keep = self.owner()
        if jobs is not None:
            jobs.append(job)
        first = 1  # (an input that is not a list may give its items slowly)
        if all(isinstance(items, (list, tuple, range)) for items in iterables):
            with contextlib.suppress(OverflowError):  # range(10**20): endless, as it were
                first = self._first_lazy_size(job, min(map(len, iterables)), options)
        feed = LazyFeed(job, items, options.lazy_chunk_size, self.packer, self.dispatcher.store,
                        first, self.pace, most=self._most_per_chunk())
        window = self.worker_count() * (self.dispatcher.scheduler.prefetch + 1)
        delivery = Delivery(blocks_in_order=options.ordered, output_in_order=options.ordered,
                            errors=options.errors)
        blocks = stream_blocks(job, feed, delivery, self.dispatcher, window=window,
                               progress=progress_bar(known_length(iterables, options.progress),
                                                     options.progress))
        return iterate(blocks, options.errors)

    def executor_map(self, fn: Callable[..., T], iterables: tuple[Any, ...], chunksize: int,
                     timeout: float | None) -> Iterator[T]:
        """``Executor.map``: everything submitted now; results in order, by a deadline."""
        seconds = check_deadline(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        star = len(iterables) > 1
        job = StreamJob(self.packer.function(fn, copy_buffers=True),
                        MapOptions(chunksize).flags(star), seed=self.seeds.for_call(None))
        job.keep = self.owner()
        chunks = eager_chunks(job, as_sequence(iterables), chunksize, self.packer)
        self.dispatcher.submit(chunks)  # now, not at the first next(): the Executor contract
        delivery = Delivery(blocks_in_order=True, output_in_order=True, finish_running=True)
        blocks = stream_blocks(job, EagerFeed([]), delivery, self.dispatcher,
                               window=len(chunks), in_flight=len(chunks), deadline=deadline)
        return iterate(blocks, "raise")

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
               timeout: float | None, seed: int | None, *, prefetch: bool = True,
               name: str | None = None, call_name: str | None = None,
               standard_first: bool = True, seeded: bool = True
               ) -> tuple[Future[T], FutureJob]:
        """One call on a worker: its future, and its job (to cancel it).

        ``prefetch=False`` sends it only to an idle worker, never queued behind
        another chunk (for callers, like joblib, that keep their own calls in flight).
        ``name``: what a profile calls it, rather than ``fn``'s name; ``call_name``:
        what error messages call it, rather than "the call to fn";
        ``standard_first=False``: its arguments go straight to cloudpickle (see
        ``codec.dumps``); ``seeded=False``: not a seeded call, even under a root seed
        (it takes no call number: joblib's batches, as many as its timing makes).
        """
        future: Future[T] = TaskFuture()
        function = self.packer.function(fn, copy_buffers=True)
        job = FutureJob(function._replace(name=name) if name else function, future,
                        self.seeds.for_call(seed) if seeded else None, timeout)
        job.prefetch = prefetch
        job.call_name = call_name
        job.keep = self.owner()
        chunk = job.chunk(0, 1, self.packer.call(args, kwargs, self.dispatcher.store,
                                                 standard_first))
        self.dispatcher.submit([chunk])
        return future, job

    def cancel(self, job: Job) -> None:
        """Drop a job's queued chunks and interrupt its running ones (nothing once closed)."""
        with contextlib.suppress(ClusterClosedError):
            self.dispatcher.cancel(job)

    def on_all(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> list[T]:
        """``run_on_all``: one call pinned to every live worker; results by worker id."""
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        job = StreamJob(self.packer.function(fn), Flag.CALL | Flag.STOP_ON_ERROR)
        frames = self.packer.call(args, kwargs, self.dispatcher.store)
        chunks = self.dispatcher.broadcast(job, frames)
        delivery = Delivery(blocks_in_order=False, output_in_order=True, fail_fast=True)
        blocks = stream_blocks(job, EagerFeed([]), delivery, self.dispatcher,
                               window=len(chunks), in_flight=len(chunks))
        return collect_list(blocks, len(chunks), ordered=True, errors="raise")

    def export(self, values: dict[str, Any]) -> None:
        """Globals on every worker, present and future (``Cluster.export``)."""
        for name in values:
            if not name.isidentifier():
                raise ValueError(f"export() names globals: {name!r} is not a Python name")
        parts = ((f"exported value {name!r}", value) for name, value in values.items())
        frames = self.packer.values(values, parts, copy_buffers=True,
                                    prefix=protocol.export_prefix(list(values)))
        self.dispatcher.add_export(list(values), frames)
