"""``sockpool.Pool``'s results: ``AsyncResult``, ``MapResult``, the imap iterators, and
the thread that completes them.

As in ``multiprocessing.pool``, one thread per pool (the *result handler*)
completes asynchronous results in the order their outcomes arrive: it runs the
``callback`` or ``error_callback`` first, then marks the result ready, so that
callbacks never run at the same time as each other, never on sockpool's I/O
thread, and have run by the time ``get()`` returns.  So a callback cannot wait
for a result that this thread settles after it (one with a callback, a
``map_async``'s): its ``get()`` without a timeout raises ``RuntimeError``
saying so, where multiprocessing's waits for ever.  An ``apply_async`` result
with neither callback is settled where its future completes instead: no user
code runs there, its ``get()`` is spared a thread hand-off (the largest part of
the drop-in's own cost in a round trip), and a slow callback elsewhere does not
hold it up.
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from ..common.calls import Returned
from ..errors import ClusterClosedError

T = TypeVar("T")

#: What the result handler runs: an outcome to apply; None stops it.
Action = Callable[[], None] | None


class ResultHandler:
    """The pool's callback thread: applies outcomes one at a time, in arrival order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Action] = queue.SimpleQueue()
        # The thread holds the queue, not the pool: an unreferenced pool can be collected.
        self._thread = threading.Thread(target=_handle, args=(self._queue,), name=name,
                                        daemon=True)
        self._thread.start()
        self._stopped = False
        self._lock = threading.RLock()  # a post and the stop never cross

    def post(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the handler thread, after what was posted before.

        Once the handler is stopped, run it here instead: an outcome that came
        after ``terminate`` (an ``apply_async`` on another thread that raced it)
        is then settled, its callback skipped, rather than left never ready.
        """
        with self._lock:
            if not self._stopped:
                self._queue.put(action)
                return
        action()

    def stop(self, wait: bool) -> None:
        """End the thread once what was posted is done (with ``wait``, wait for that)."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._queue.put(None)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    @property
    def is_current(self) -> bool:
        """Whether the calling thread is this handler (a callback calling the pool)."""
        return threading.current_thread() is self._thread


def _handle(actions: queue.SimpleQueue[Action]) -> None:
    while (action := actions.get()) is not None:
        try:
            action()
        except BaseException:  # a callback's error must not end the handler (it would hang get())
            print("Exception in a sockpool.Pool callback:", file=sys.stderr)
            traceback.print_exc()


class Tracker:
    """A pool's state and what it has in flight, so that ``join`` can wait for it and
    ``terminate`` fail it.

    Shared by the pool, its results and its finalizer (which must not hold the
    pool itself).
    """

    def __init__(self) -> None:
        self.pool_state = "RUN"  #: "RUN", "CLOSE" or "TERMINATE"
        self._cond = threading.Condition()
        self._pending: set[Any] = set()
        self.terminated = threading.Event()
        #: Called (on the thread that finished the last item) when nothing is left.
        self.on_idle: Callable[[], None] | None = None

    def add(self, item: Any) -> None:
        """Count ``item`` (a result, an iterator, a running synchronous call) in flight."""
        with self._cond:
            self._pending.add(item)

    def discard(self, item: Any) -> None:
        """``item`` is done; wakes ``wait_idle`` when it was the last."""
        with self._cond:
            self._pending.discard(item)
            idle = not self._pending
            if idle:
                self._cond.notify_all()
            on_idle = self.on_idle if idle else None
        if on_idle is not None:
            on_idle()

    def wait_idle(self) -> None:
        """Block until nothing is in flight."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending)

    @property
    def idle(self) -> bool:
        """Whether nothing is in flight."""
        with self._cond:
            return not self._pending

    def pending(self) -> list[Any]:
        """What is in flight now."""
        with self._cond:
            return list(self._pending)


class ApplyResult(Generic[T]):
    """The outcome of ``apply_async``: ``multiprocessing.pool.AsyncResult``'s methods."""

    def __init__(self, tracker: Tracker, callback: Callable[[T], object] | None,
                 error_callback: Callable[[BaseException], object] | None,
                 owner: object = None, handler: ResultHandler | None = None) -> None:
        self._tracker = tracker
        self._handler = handler  # the thread that settles it (it has callbacks, or is a map's)
        self._owner = owner  # the pool, kept alive until this is settled (as multiprocessing)
        #: Cancels the task if it has not started (set by the pool; used by terminate).
        self._cancel: Callable[[], object] | None = None
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._claim = threading.Lock()
        self._claimed = False
        self._success = False
        self._value: Any = None
        tracker.add(self)

    def ready(self) -> bool:
        """Whether the call has completed (succeeded or failed)."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising.

        Raises:
            ValueError: the result is not ready.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, or ``timeout`` seconds have passed.

        Raises:
            RuntimeError: called in a callback of the pool without a timeout, for a
                result that the callbacks' thread settles after it (it would wait
                for ever; with a timeout it waits that long, as multiprocessing's).
        """
        if (timeout is None and self._handler is not None and self._handler.is_current
                and not self._event.is_set()):
            raise RuntimeError(
                "a callback of this pool cannot wait for a result that has a callback "
                "or comes from map_async: the thread running it settles that result after "
                "this callback returns (multiprocessing's would wait for ever); use apply(), "
                "map(), or a result without a callback, or wait outside the callback")
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """The value; re-raises the task's exception if it failed.

        Raises:
            multiprocessing.TimeoutError: not ready within ``timeout`` seconds.
        """
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def _complete(self, success: bool, value: Any, callbacks: bool = True) -> None:
        """Settle once: run the callback (unless the pool was terminated), then mark ready."""
        with self._claim:
            if self._claimed:
                return
            self._claimed = True
        self._success, self._value = success, value
        callback = self._callback if success else self._error_callback
        try:
            if callbacks and callback is not None and not self._tracker.terminated.is_set():
                callback(value)
        finally:
            self._event.set()
            self._owner = self._cancel = None
            self._tracker.discard(self)

    def _abort(self, error: BaseException) -> None:
        """Fail without callbacks (the pool was terminated)."""
        self._complete(False, error, callbacks=False)


AsyncResult = ApplyResult  # multiprocessing's alias


class MapResult(ApplyResult[list[T]]):
    """The outcome of ``map_async``/``starmap_async``: the list of results."""


def settle_from_future(result: ApplyResult[Any], handler: ResultHandler) -> Callable[
        [Future[Any]], None]:
    """A ``Future`` done-callback that settles ``result`` with the future's outcome.

    It runs on sockpool's I/O thread (or at once, for a future already done).
    With a callback to run, it only posts to the result handler, so that the
    user's callback runs there, in turn.  Without one, it settles the result
    at once: setting an event, and at most (the pool's last result dropped, or
    a closed pool's last task done) closing the cluster, which the I/O thread
    may do without waiting on itself.
    """
    if result._callback is None and result._error_callback is None:
        return functools.partial(_apply_future, result)

    def done(future: Future[Any]) -> None:
        handler.post(lambda: _apply_future(result, future))

    return done


def _apply_future(result: ApplyResult[Any], future: Future[Any]) -> None:
    if future.cancelled():
        # As terminate() fails those it finds started (it cancels the rest first).
        result._complete(False, ClusterClosedError(
            "the pool was terminated (or its cluster shut down) before this task started"))
        return
    error = future.exception()
    if error is not None:
        result._complete(False, error)
    else:
        result._complete(True, future.result())


#: Results an imap holds that its caller has not taken, past which its reader waits
#: (until half are taken) rather than read more input: an endless input, or a
#: caller that stopped taking, does not fill memory.  Not once the pool is closed:
#: ``join`` waits for every result.
HELD_RESULTS = 1024


class IMapIterator(Iterator[T]):
    """Results of ``imap`` in input order (``imap_unordered``: as they finish).

    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` when no result
    came in time; a failed task raises its exception at its place, and the
    iteration goes on after it, as ``multiprocessing``'s does.
    """

    def __init__(self, tracker: Tracker, owner: object = None) -> None:
        self._tracker = tracker
        self._owner = owner  # the pool, kept alive until every result is in
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()
        self._done = False
        tracker.add(self)

    def __iter__(self) -> IMapIterator[T]:
        return self

    def next(self, timeout: float | None = None) -> T:
        """The next result, waiting at most ``timeout`` seconds.

        Raises:
            StopIteration: every result was taken.
            multiprocessing.TimeoutError: none came within ``timeout``.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._done, timeout):
                raise multiprocessing.TimeoutError
            if not self._items:
                raise StopIteration
            success, value = self._items.popleft()
            if len(self._items) == HELD_RESULTS // 2:
                self._cond.notify_all()  # the reader waits for room
        if success:
            return value  # type: ignore[no-any-return]
        raise value

    __next__ = next

    def _put(self, value: Any) -> None:
        """One task's outcome (a failure comes as its exception, a boxed exception as is)."""
        if isinstance(value, Returned):
            item = (True, value.value)
        else:
            item = (not isinstance(value, BaseException), value)
        with self._cond:
            if not self._done:
                self._items.append(item)
                self._cond.notify()

    def _wait_for_room(self) -> None:
        """Block the reader while :data:`HELD_RESULTS` results wait to be taken."""
        with self._cond:
            if len(self._items) >= HELD_RESULTS:
                self._cond.wait_for(lambda: len(self._items) <= HELD_RESULTS // 2
                                    or self._done or self._tracker.pool_state != "RUN")

    def _wake(self) -> None:
        """The pool was closed: a reader waiting for room reads on."""
        with self._cond:
            self._cond.notify_all()

    def _finish(self, error: BaseException | None = None) -> None:
        """No more results (after ``error``, raised at the next place, if given)."""
        with self._cond:
            if self._done:
                return
            if error is not None:
                self._items.append((False, error))
            self._done = True
            self._cond.notify_all()
        self._owner = None
        self._tracker.discard(self)

    def _abort(self, error: BaseException) -> None:
        """The pool was terminated: what is left raises ``error``, then the iteration ends."""
        self._finish(error)


class IMapUnorderedIterator(IMapIterator[T]):
    """Results of ``imap_unordered``, in the order they finish."""
