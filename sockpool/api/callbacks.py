"""Done-callbacks kept off the cluster's I/O thread.

A task's future completes on the I/O thread, which serves every call of its
cluster: a callback run there that waits for another task (``cl.submit(...)
.result()``, a ``par_map``) would wait for itself, and the whole cluster with
it.  :class:`TaskFuture` hands each user callback that would run there to
one callback thread instead, in the order the futures completed, as
``ThreadPoolExecutor`` runs callbacks on a thread that may block.  Callbacks
that only hand the outcome on (asyncio's ``wrap_future``, sockpool's own)
still run at once.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..dispatch import IO_THREAD_NAME

T = TypeVar("T")

#: A callback's error is logged where ``Future`` logs one: a filter on that logger
#: sees every callback's, wherever it ran.
_log = logging.getLogger("concurrent.futures")


#: Modules whose callbacks never block: they run where the future completes.
_PASSING_ON = ("asyncio.", "sockpool.")


class CallbackThread:
    """Runs callbacks in order, on a thread of its own (started at first need)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Any]] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pending = 0  # scheduled and not yet run to their end

    def schedule(self, callback: Callable[[Any], Any], argument: Any) -> None:
        """Call ``callback(argument)`` on the callback thread, after those scheduled before."""
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put((callback, argument))

    def wait_idle(self, timeout: float | None = None) -> None:
        """Return once every callback scheduled so far has run (at most ``timeout``
        seconds; at once on the callback thread itself, which would wait for itself)."""
        if threading.current_thread() is self._thread:
            return
        with self._lock:
            self._lock.wait_for(lambda: not self._pending, timeout)

    def _run(self) -> None:
        while True:
            callback, argument = self._queue.get()
            try:
                callback(argument)
            except BaseException:  # as concurrent.futures does with a callback's error
                _log.exception("exception calling callback for %r", argument)
            finally:
                with self._lock:
                    self._pending -= 1
                    self._lock.notify_all()


#: The thread that runs task futures' callbacks that completed on an I/O thread.
callbacks = CallbackThread("sockpool-callbacks")


class TaskFuture(Future[T]):
    """The future of a task: a done-callback never runs on the cluster's I/O thread,
    so it may wait for other tasks (see the module's docstring)."""

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        if _passes_on(fn):
            super().add_done_callback(fn)
            return

        def off_the_io_thread(future: Future[T]) -> None:
            if threading.current_thread().name == IO_THREAD_NAME:
                callbacks.schedule(fn, future)
            else:  # added once done, or completed elsewhere (a cancel): as Future does
                fn(future)

        super().add_done_callback(off_the_io_thread)


def _passes_on(fn: Any) -> bool:
    """Whether ``fn`` (a partial: its function) is asyncio's or sockpool's own."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__module__", None) or "").startswith(_PASSING_ON)
