"""asyncio on a cluster: awaitable calls that never block the event loop.

Every blocking step runs in another thread: serializing a ``submit`` in a
small pool of sockpool's (it is short), a map and each step of an ``aimap`` in
a thread of the call's own (they wait as long as their tasks run, and would
otherwise hold the default executor's few threads, stalling every other
call).  Cancelling the awaiting asyncio task cancels the sockpool job behind
it, also one still being sent: its waiting tasks are dropped and its running
ones interrupted, as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..common.forking import fork_safe_lock
from ..errors import ClusterClosedError
from .carried import CarriedStopIteration
from .map_options import MapOptions

if TYPE_CHECKING:
    from ..dispatch.jobs import Job
    from .calls import Calls

T = TypeVar("T")


class Cancels(Protocol):
    """What cancelling needs: the dispatcher's ``cancel``."""

    def cancel(self, job: Job) -> None:
        """Drop a job's waiting chunks and interrupt its running ones."""


class JobHolder:
    """Where a call made in a thread leaves its jobs, for the loop to cancel them.

    Once cancelled, the call stops where it is: reading its input (at the next
    item) or making its job (which is cancelled as it comes, and the call raises).
    """

    def __init__(self, dispatch: Cancels) -> None:
        self._dispatch = dispatch
        self._jobs: list[Job] = []
        self._lock = threading.Lock()  # the call's thread adds, the loop's cancels
        self.cancelled = False

    def append(self, job: Job) -> None:
        """The call made ``job``; raises CancelledError if the call was cancelled."""
        with self._lock:
            self._jobs.append(job)
            cancelled = self.cancelled
        if cancelled:
            _cancel(self._dispatch, job)
            raise CancelledError("the awaiting task was cancelled")

    def cancel_all(self) -> None:
        """Cancel every job the call made, and any it makes from now on."""
        with self._lock:
            self.cancelled = True
            jobs = list(self._jobs)
        for job in jobs:
            _cancel(self._dispatch, job)

    def reading(self, iterable: Iterable[T]) -> Iterable[T]:
        """``iterable``, read only until the call is cancelled (a list as it is)."""
        if isinstance(iterable, (list, tuple, range)):
            return iterable
        return _UntilCancelled(self, iterable)


class _UntilCancelled(Iterable[T]):
    """An input read only until its call is cancelled; its length is the input's
    (a progress bar's total)."""

    def __init__(self, holder: JobHolder, items: Iterable[T]) -> None:
        self._holder = holder
        self._items = items

    def __iter__(self) -> Iterator[T]:
        for item in self._items:
            if self._holder.cancelled:
                raise CancelledError("the awaiting task was cancelled")
            yield item

    def __len__(self) -> int:
        return len(self._items)  # type: ignore[arg-type]  # (TypeError: it has none)


def _cancel(dispatch: Cancels, job: Job) -> None:
    with contextlib.suppress(ClusterClosedError):
        dispatch.cancel(job)


async def result(future: Future[T], job: Job, dispatch: Cancels) -> T:
    """Await a submitted task's future; cancelled, it cancels the task (interrupting it)."""
    import asyncio  # here: only code running in an event loop pays for it

    try:
        return await asyncio.wrap_future(_carrying_stop_iteration(future))
    except asyncio.CancelledError:
        _cancel(dispatch, job)
        raise
    except CarriedStopIteration as carried:
        error = carried.error
    raise error  # out of the handler; in a coroutine, the RuntimeError of PEP 479


def _carrying_stop_iteration(future: Future[T]) -> Future[T]:
    """A future that follows ``future`` (and cancels it when cancelled itself), a
    StopIteration it ends with carried."""
    follower: Future[T] = Future()

    def follow(done: Future[T]) -> None:
        with contextlib.suppress(InvalidStateError):  # the follower was cancelled
            if done.cancelled():
                follower.cancel()
            elif isinstance(error := done.exception(), StopIteration):
                follower.set_exception(CarriedStopIteration(error))
            elif error is not None:
                follower.set_exception(error)
            else:
                follower.set_result(done.result())

    def cancel_followed(done: Future[T]) -> None:
        if done.cancelled():
            future.cancel()

    follower.add_done_callback(cancel_followed)
    future.add_done_callback(follow)
    return follower


async def in_thread(call: Callable[[JobHolder], T], dispatch: Cancels) -> T:
    """Run a blocking call in a thread; cancelled, cancel the jobs it made."""
    import asyncio  # here: only code running in an event loop pays for it

    def carrying(holder: JobHolder) -> T:
        try:
            return call(holder)
        except StopIteration as exc:
            raise CarriedStopIteration(exc) from None

    holder = JobHolder(dispatch)
    with _own_thread() as thread:
        task = asyncio.get_running_loop().run_in_executor(thread, carrying, holder)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            holder.cancel_all()
            with contextlib.suppress(BaseException):  # its outcome is the cancellation's now
                await task
            raise
        except CarriedStopIteration as carried:
            error = carried.error
    raise error  # out of the handler; in a coroutine, the RuntimeError of PEP 479


async def iterate(start: Callable[[JobHolder], Iterator[T]], dispatch: Cancels
                  ) -> AsyncIterator[T]:
    """An async iterator over a blocking iterator, read in a thread of its own.

    The thread reads ahead into a small buffer (:class:`_Handoff`), and the loop
    takes what is there at each wake-up: one thread hop per item cost 85 µs, 100x
    the item itself.  Leaving the ``async for`` early (or cancelling the task in
    it) cancels the jobs behind the iterator.  The reader is a daemon thread: one
    left waiting for room by an iterator never closed (its loop closed without
    ``shutdown_asyncgens``) does not hold the interpreter at exit.
    """
    import asyncio  # here: only code running in an event loop pays for it

    holder = JobHolder(dispatch)
    loop = asyncio.get_running_loop()
    with _own_thread() as thread:
        iterator = await loop.run_in_executor(thread, start, holder)
        handoff = _Handoff(loop, asyncio.Event())
        reader = threading.Thread(target=handoff.read, args=(iterator,), daemon=True,
                                  name="sockpool-aimap")
        reader.start()
        finished = False
        try:
            while True:
                items = await handoff.take()
                if items is None:
                    finished = True
                    return
                for item in items:
                    yield item
        finally:
            if not finished:
                handoff.stop()
                holder.cancel_all()
                with contextlib.suppress(BaseException):  # the reader ends with its jobs
                    await loop.run_in_executor(thread, reader.join)
                close = getattr(iterator, "close", None)
                if close is not None:
                    with contextlib.suppress(BaseException):
                        await loop.run_in_executor(thread, close)


#: How far the reading thread of an ``aimap`` may run ahead of the ``async for``:
#: items, and their size (see :func:`_footprint`).
AHEAD_ITEMS = 256
AHEAD_BYTES = 1 << 20
#: Containers up to this many items are looked into for their items' sizes.
LOOKED_INTO = 64


def _footprint(item: Any) -> int:
    """About the bytes ``item`` holds: a buffer's (an array that came from a worker does
    not own its memory, and ``sys.getsizeof`` counts only its header), and one level
    into a small list, tuple or dict (a result of a few arrays) or into the attributes
    of an object without ``nbytes`` (a SciPy sparse matrix's arrays).  A large
    container's shell already counts a pointer per item."""
    size, own = _own_bytes(item)
    if isinstance(item, (list, tuple)):
        inside: Any = item
    elif isinstance(item, dict):
        inside = item.values()
    elif not own and isinstance(getattr(item, "__dict__", None), dict):
        inside = vars(item).values()
    else:
        return size
    if len(inside) <= LOOKED_INTO:
        size += sum(_own_bytes(value)[0] for value in inside)
    return size


def _own_bytes(value: Any) -> tuple[int, bool]:
    """``(bytes, whether they are a buffer's nbytes)``; nothing is worth failing for."""
    try:
        nbytes = getattr(value, "nbytes", None)  # NumPy and friends, memoryview
        if isinstance(nbytes, numbers.Integral):
            return int(nbytes), True
        return sys.getsizeof(value), False
    except Exception:  # an odd __getattr__ or __sizeof__
        return 0, False


class _Handoff:
    """Items a thread reads from a blocking iterator, for an event loop to take in
    batches: the thread waits while the buffer is full, the loop while it is empty."""

    def __init__(self, loop: Any, ready: Any) -> None:
        self._loop = loop
        self._ready = ready  # an asyncio.Event of the loop: something to take
        self._space = threading.Condition()
        self._items: list[Any] = []
        self._bytes = 0
        self._end: BaseException | None = None  # how reading ended (StopAsyncIteration: done)
        self._stopped = False

    def read(self, iterator: Iterator[Any]) -> None:
        """Read ``iterator`` to its end, or until :meth:`stop` (the reading thread)."""
        try:
            for item in iterator:
                size = _footprint(item)  # (outside the lock, which the loop takes)
                with self._space:
                    while (len(self._items) >= AHEAD_ITEMS or self._bytes >= AHEAD_BYTES
                           ) and not self._stopped:
                        self._space.wait()
                    if self._stopped:
                        return
                    self._items.append(item)
                    self._bytes += size
                    wake = len(self._items) == 1
                if wake:
                    self._wake()
            end: BaseException = StopAsyncIteration()
        except BaseException as exc:  # raised in the loop (a task's StopIteration, carried)
            end = exc
        with self._space:
            self._end = end
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody takes
            self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list[Any] | None:
        """What was read since the last take (waiting for something); None at the end.
        Raises the iterator's error once every item read before it was taken."""
        while True:
            with self._space:
                if self._items:
                    items, self._items, self._bytes = self._items, [], 0
                    self._space.notify()
                    return items
                end = self._end
                if end is None:
                    self._ready.clear()
            if end is not None:
                break
            await self._ready.wait()
        if isinstance(end, StopAsyncIteration):
            return None
        if isinstance(end, CarriedStopIteration):
            error: BaseException = end.error
        else:
            error = end
        raise error

    def stop(self) -> None:
        """Stop reading (the ``async for`` was left): the reader returns at its next item."""
        with self._space:
            self._stopped = True
            self._space.notify()


@contextlib.contextmanager
def _own_thread() -> Iterator[ThreadPoolExecutor]:
    """One thread for one call's blocking steps, ended with the call (not waited for:
    a cancelled step ends on its own once its job is cancelled)."""
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sockpool-async")
    try:
        yield thread
    finally:
        thread.shutdown(wait=False)


async def submit(calls: Calls, fn: Callable[..., T], args: tuple[Any, ...],
                 kwargs: dict[str, Any], timeout: float | None, seed: int | None) -> T:
    """``Cluster.asubmit``, once checked: serialized in a thread, then awaited."""
    import asyncio  # here: only code running in an event loop pays for it

    # A future of concurrent.futures, not of the loop: the sending thread completes
    # it even after the loop has ended (asyncio.run cancels what is left, then closes).
    sending = _senders().submit(calls.submit, fn, args, kwargs, timeout, seed)
    try:
        future, job = await asyncio.wrap_future(sending)
    except asyncio.CancelledError:  # while its arguments were serialized: cancel it once sent
        sending.add_done_callback(functools.partial(_cancel_sent, calls.dispatcher))
        raise
    return await result(future, job, calls.dispatcher)


def _cancel_sent(dispatch: Cancels, sending: Future[tuple[Future[Any], Job]]) -> None:
    """Cancel the job a cancelled ``asubmit`` sent after all (none if sending failed, or
    never started)."""
    if not sending.cancelled() and sending.exception() is None:
        _, job = sending.result()
        _cancel(dispatch, job)


_sender_pool: ThreadPoolExecutor | None = None
_sender_lock = fork_safe_lock()


def _senders() -> ThreadPoolExecutor:
    """The threads that serialize and send ``asubmit`` calls (short work, many calls)."""
    global _sender_pool
    with _sender_lock:
        if _sender_pool is None:
            _sender_pool = ThreadPoolExecutor(thread_name_prefix="sockpool-send")
        return _sender_pool


async def as_list(calls: Calls, fn: Callable[..., T], iterables: tuple[Any, ...],
                  options: MapOptions) -> list[T]:
    """``Cluster.apar_map``, once checked."""
    return await in_thread(lambda held: calls.as_list(
        fn, tuple(map(held.reading, iterables)), options, len(iterables) > 1, held),
        calls.dispatcher)


def lazily(calls: Calls, fn: Callable[..., T], iterables: tuple[Any, ...],
           options: MapOptions, check_open: Callable[[], None]) -> AsyncIterator[T]:
    """``Cluster.aimap``, once checked (``check_open`` first, in the call's thread: it
    waits for the workers of a cluster still starting)."""
    def start(held: JobHolder) -> Iterator[T]:
        check_open()
        return calls.lazily(fn, tuple(map(held.reading, iterables)), options, held)

    return iterate(start, calls.dispatcher)


async def check_open(check: Callable[[], None], *, starting: bool) -> None:
    """A cluster's ``_check_open``, in a thread while its workers start (a cluster made
    in an event loop and not entered with ``async with``): it waits for them."""
    import asyncio  # here: only code running in an event loop pays for it

    if starting:
        await asyncio.get_running_loop().run_in_executor(None, check)
    else:
        check()


async def blocking(step: Callable[[], object], on_cancel: Callable[[], object]) -> None:
    """Run a blocking step of a cluster's lifetime (waiting for its workers, leaving
    ``async with``) in a thread.  Cancelled, ``on_cancel`` (closing the cluster) runs,
    and the step is waited for, before the cancellation goes on: a start or an exit
    that was cancelled stops, rather than going on unobserved."""
    import asyncio  # here: only code running in an event loop pays for it

    loop = asyncio.get_running_loop()
    task = loop.run_in_executor(None, step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):  # its outcome is the cancellation's now
            await loop.run_in_executor(None, on_cancel)
            await task
        raise
