"""The worker's one state, shared by its two threads: its phase and the job it runs.

The main thread runs chunks; the watchdog thread takes CANCEL and SHUTDOWN and
interrupts a running chunk by sending SIGINT to the main thread, whose handler
raises :class:`Interrupted` in the task.  Every transition happens here, under
one lock, so that the watchdog's "is that job running?" and the main thread's
"may this chunk start?" never see each other half done::

    IDLE --start_chunk (main)--> RUNNING --end_chunk (main)--> IDLE
                                    |
                           cancel (watchdog, SIGINT)
                                    v
                               CANCELLING --end_chunk (main)--> IDLE

    any --shutdown (watchdog, SIGINT if RUNNING; or main, on SHUTDOWN by data)--> STOPPING

STOPPING is final: a chunk that runs is interrupted, none starts, and the main
loop ends.  At most one SIGINT is sent per chunk (only a RUNNING chunk is
signalled), so the interruption is raised once and caught by the chunk's runner.
It must not be lost in C code that cannot pass an exception on: pyzmq checks
signals as a zero-copy frame is freed, so what a task's print sends goes
copied (:func:`.link.frame_sender`).
"""

from __future__ import annotations

import contextlib
import enum
import signal
import threading
import types
from collections.abc import Iterator
from typing import NamedTuple

from ..common.proc import STACKS_SIGNAL
from ..common.protocol import RECLAIM_MEMORY

try:  # signal's own wrap these to make enums of handlers and masks: microseconds a chunk
    import _signal  # type: ignore[import-not-found]

    _raw_getsignal, _raw_sigmask = _signal.getsignal, _signal.pthread_sigmask
except ImportError:  # (not CPython)
    _raw_getsignal, _raw_sigmask = signal.getsignal, signal.pthread_sigmask
_SIGINT = int(signal.SIGINT)
#: What the worker's own machinery signals the main thread with: never left blocked.
_OURS = (_SIGINT, int(STACKS_SIGNAL))

#: Cancelled job ids remembered (a chunk of one may still be queued here).
CANCELLED_MEMORY = 1024


class Interrupted(KeyboardInterrupt):
    """Raised in a running task when its job is cancelled or the worker stops: a
    ``KeyboardInterrupt``, so that a task's ``except KeyboardInterrupt:`` cleanup
    runs, as it does in a ``multiprocessing`` worker on Ctrl-C."""


class WorkerPhase(enum.Enum):
    """What the worker is doing (the main thread's loop, seen by the watchdog)."""

    IDLE = "idle"  #: no chunk runs: the main thread waits for or handles a message
    RUNNING = "running"  #: a chunk's tasks run on the main thread
    CANCELLING = "cancelling"  #: the running chunk's job was cancelled; SIGINT was sent
    STOPPING = "stopping"  #: SHUTDOWN came: a running chunk is interrupted, the loop ends


class Snapshot(NamedTuple):
    """The phase and the job of the chunk running (None when none), read as one value."""

    phase: WorkerPhase
    job: int | None


_IDLE = Snapshot(WorkerPhase.IDLE, None)


class WorkerState:
    """The worker's phase, the job it runs and the jobs cancelled, shared by both threads.

    Transitions take the lock; readers read :attr:`now`, one attribute replaced
    whole, so that they see a phase and a job that belong together without
    locking (the SIGINT handler, which runs on the main thread between two of
    its bytecodes, must never wait for a lock that thread may hold).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = _IDLE
        self._cancelled: dict[int, None] = {}  # an ordered set, oldest first
        self._taken: dict[int, None] = {}  # chunks the main thread took, likewise
        # Chunks given back before the main thread took them, with how many times: a
        # chunk given back may come here again, and be given back again, before the
        # first copy is read; each grant skips one copy, the earliest.
        self._given_back: dict[int, int] = {}
        self._on_sigint = self.on_sigint  # (one bound method, told by identity)

    @property
    def stopping(self) -> bool:
        """SHUTDOWN came: the main loop ends at its next turn."""
        return self.now.phase is WorkerPhase.STOPPING

    # -- the main thread -----------------------------------------------------------------

    def take(self, chunk: int) -> bool:
        """The main thread read a TASK: False when the master took it back (RECLAIM),
        so that it must not run here; from now on it cannot be taken back."""
        with self._lock:
            copies = self._given_back.pop(chunk, 0)
            if copies:
                if copies > 1:
                    self._given_back[chunk] = copies - 1
                return False
            _remember(self._taken, chunk, RECLAIM_MEMORY)
            return True

    def start_chunk(self, job: int) -> bool:
        """IDLE -> RUNNING; False (and no change) when the job was cancelled or the worker stops."""
        with self._lock:
            if self.now.phase is not WorkerPhase.IDLE or job in self._cancelled:
                return False
            self.now = Snapshot(WorkerPhase.RUNNING, job)
            return True

    def end_chunk(self) -> None:
        """The running chunk ended, done or interrupted: back to IDLE, or STOPPING stays."""
        with self._lock:
            if self.now.phase is WorkerPhase.STOPPING:
                self.now = Snapshot(WorkerPhase.STOPPING, None)
            else:
                self.now = _IDLE

    def keep_interruptible(self) -> None:
        """Handle SIGINT with :meth:`on_sigint` (main thread), again where a task put
        another handler (``SIG_IGN`` left every later task there uninterruptible), and
        take SIGINT and the stack signal again where a task blocked them (its
        ``pthread_sigmask``: no later task could be interrupted, nor say where it was)."""
        if _raw_getsignal(_SIGINT) is not self._on_sigint:
            signal.signal(signal.SIGINT, self._on_sigint)
        _raw_sigmask(signal.SIG_UNBLOCK, _OURS)

    def on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
        """SIGINT from the watchdog interrupts a cancelled or stopped chunk; otherwise ignored."""
        if self.interrupting():
            raise Interrupted

    def interrupting(self) -> bool:
        """Whether the running chunk is to be interrupted (cancelled, or the worker stops)."""
        phase, job = self.now
        return phase is WorkerPhase.CANCELLING or (phase is WorkerPhase.STOPPING
                                                   and job is not None)

    # -- the watchdog thread (shutdown: either thread) ------------------------------------

    def cancel(self, job: int) -> bool:
        """Remember a cancelled job; True when a chunk of it runs and must be interrupted now."""
        with self._lock:
            _remember(self._cancelled, job, CANCELLED_MEMORY)
            if self.now == (WorkerPhase.RUNNING, job):
                self.now = Snapshot(WorkerPhase.CANCELLING, job)
                return True
            return False

    def reclaim(self, chunk: int) -> bool:
        """The master wants a chunk back for an idle worker: True (it will be skipped
        here) unless the main thread has taken it already."""
        with self._lock:
            if chunk in self._taken:
                return False
            self._given_back[chunk] = self._given_back.get(chunk, 0) + 1
            if len(self._given_back) > RECLAIM_MEMORY:
                del self._given_back[next(iter(self._given_back))]
            return True

    def shutdown(self) -> bool:
        """Any phase -> STOPPING; True when a chunk runs and must be interrupted now."""
        with self._lock:
            interrupt = self.now.phase is WorkerPhase.RUNNING  # CANCELLING: already signalled
            self.now = Snapshot(WorkerPhase.STOPPING, self.now.job)
            return interrupt


def raised_by_a_handler(error: OSError) -> bool:
    """Whether an ``OSError`` met around a system call came from no system call (one
    has an errno) but from a task's signal handler, run between two bytecodes: a
    ``TimeoutError`` of its own time limit (``signal.alarm``), which is the task's,
    and must not be taken for the call's failure."""
    return error.errno is None


@contextlib.contextmanager
def system_errors_ignored() -> Iterator[None]:
    """``contextlib.suppress(OSError)``, but not of what :func:`raised_by_a_handler`."""
    try:
        yield
    except OSError as error:
        if raised_by_a_handler(error):
            raise


def _remember(ordered: dict[int, None], key: int, limit: int) -> None:
    """Add ``key`` to an ordered set, forgetting its oldest beyond ``limit``."""
    ordered[key] = None
    if len(ordered) > limit:
        del ordered[next(iter(ordered))]
