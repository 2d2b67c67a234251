"""How other threads hand work to the I/O thread: a queue of commands and a wake-up pipe.

zmq sockets are not thread-safe, so only the I/O thread touches them.  Any
other thread posts a command (a callable) here and writes one byte to a pipe
that the I/O thread polls beside its socket; the I/O thread then runs the
commands in the order they were posted.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..errors import ClusterClosedError

T = TypeVar("T")

#: Longest :meth:`Mailbox.post_and_wait` waits for the I/O thread to run a command.
HANDOVER_SECONDS = 0.01


class Mailbox:
    """Commands for the I/O thread, posted from any thread."""

    def __init__(self) -> None:
        self._commands: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        # Held while posting and closing, so that nothing is posted (or a wake-up
        # byte written) once the pipe is closed.  Reentrant: the garbage collector
        # may run a finalizer that posts (an abandoned imap cancelling its job)
        # while this thread holds it; a plain lock deadlocked there, the I/O thread
        # included, and the whole cluster hung.
        self._lock = threading.RLock()
        self._closed = False

    def fileno(self) -> int:
        """The pipe's read end, readable when commands wait (for the I/O thread's poller)."""
        return self._wake_r

    def __bool__(self) -> bool:
        return bool(self._commands)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the I/O thread, soon.

        Raises:
            ClusterClosedError: the I/O thread has ended.
        """
        with self._lock:
            if self._closed:
                raise ClusterClosedError("the cluster is closed")
            self._commands.append((fn, args))
            if not self._wake_pending:
                self._wake_pending = True
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\0")

    def ask(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run ``fn(*args)`` on the I/O thread; return what it returns, or raise what it raised."""
        answer: Future[T] = Future()

        def run() -> None:
            try:
                answer.set_result(fn(*args))
            except BaseException as exc:
                answer.set_exception(exc)

        self.post(run)
        return answer.result(timeout)

    def post_and_wait(self, fn: Callable[..., Any], *args: Any) -> None:
        """Post ``fn(*args)``, then wait until the I/O thread has run it, at most
        :data:`HANDOVER_SECONDS`.

        For a caller about to hold the GIL a while (serializing the next chunk):
        woken by a plain post, the I/O thread waits for the GIL up to the
        interpreter's switch interval (5 ms) before it can run the command.
        Waiting here hands the GIL over; it promises nothing more.
        """
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        self.post(run)
        done.wait(HANDOVER_SECONDS)

    def clear_wake(self) -> None:
        """On the I/O thread, when the pipe is readable: empty it before running commands.

        Cleared before the commands are read: a command posted after this point
        writes a new wake-up byte, so none is missed.  The pipe is read before
        the flag is reset: a post in between finds the flag set and writes
        nothing, but its command is queued already and runs in this turn; a
        post between a reset and the read would have its byte read here while
        the flag stayed set, and no later post would write one (the I/O thread
        then saw commands only when a message or a timer woke it).  Not under
        the posters' lock, which a poster holds through its write: the I/O
        thread, woken by that write, would wait for it.
        """
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        self._wake_pending = False

    def run_all(self) -> None:
        """On the I/O thread: run every command posted so far, in order."""
        while self._commands:
            fn, args = self._commands.popleft()
            fn(*args)

    def close(self) -> None:
        """Refuse new commands, close the pipe, and run what is left (no poster waits forever)."""
        with self._lock:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
        while self._commands:
            fn, args = self._commands.popleft()
            with contextlib.suppress(Exception):
                fn(*args)
