"""Where a cluster is in its life: one state, changed only by the transitions below.

::

    OPEN --shutdown()--> DRAINING --queue empty--> STOPPING --workers gone--> CLOSED
      |                     |                         ^
      |                     +---------close()---------+
      +--------------------close()--------------------+
      +--no worker left--> BROKEN --close() or shutdown()--> STOPPING

``OPEN`` takes work.  ``DRAINING`` (``shutdown(wait=...)``) takes nothing new and
finishes what it has.  ``STOPPING`` has told the workers to stop and waits for
them to exit.  ``CLOSED`` is final: every worker is gone.  ``BROKEN`` takes no
work because no worker is left and none can be replaced; its
:attr:`Lifecycle.error` says why.  Any thread may read the state; the caller's
thread makes the transitions a user asks for (so that ``submit`` after
``shutdown`` fails at once), the I/O thread the others.
"""

from __future__ import annotations

import enum
import threading

from ..errors import ClusterClosedError, NoWorkersLeftError


class ClusterState(enum.Enum):
    """The states of a cluster (see the module docstring); the value is what its repr says."""

    OPEN = "running"
    DRAINING = "closing"
    STOPPING = "stopping"
    CLOSED = "closed"
    BROKEN = "broken"


#: Which states each state may move to.
_NEXT = {
    ClusterState.OPEN: {ClusterState.DRAINING, ClusterState.STOPPING, ClusterState.BROKEN},
    # Draining with no worker left: its work fails, and then it stops as usual.
    ClusterState.DRAINING: {ClusterState.STOPPING},
    ClusterState.BROKEN: {ClusterState.STOPPING},
    ClusterState.STOPPING: {ClusterState.CLOSED},
    ClusterState.CLOSED: set(),
}


class Lifecycle:
    """A cluster's state, its transitions, and an event set once it is closed."""

    def __init__(self) -> None:
        self._state = ClusterState.OPEN
        self._lock = threading.Lock()
        self.error: NoWorkersLeftError | None = None  # why it is broken
        #: What ended the I/O thread, if something did (a bug): later refusals say it.
        self.loop_error: BaseException | None = None
        self.closed = threading.Event()
        #: ``shutdown(wait=False)`` was its last word: the exit hook lets it drain.
        self.drain_at_exit = False

    @property
    def state(self) -> ClusterState:
        """The current state."""
        return self._state

    @property
    def takes_work(self) -> bool:
        """Whether new work is accepted."""
        return self._state is ClusterState.OPEN

    @property
    def wants_workers(self) -> bool:
        """Whether a worker that is lost should be replaced: work may still need it."""
        return self._state in (ClusterState.OPEN, ClusterState.DRAINING)

    def move(self, state: ClusterState) -> bool:
        """Go to ``state`` if the current state allows it; True when it did."""
        with self._lock:
            if state not in _NEXT[self._state]:
                return False
            self._state = state
        if state is ClusterState.CLOSED:
            self.closed.set()
        return True

    def break_down(self, error: NoWorkersLeftError) -> bool:
        """No worker is left: take no more work, remembering why."""
        with self._lock:
            if ClusterState.BROKEN not in _NEXT[self._state]:
                return False
            self._state = ClusterState.BROKEN
            self.error = error
        return True

    def refusal(self) -> ClusterClosedError:
        """The error for work handed to a cluster that takes none."""
        if self._state is ClusterState.BROKEN and self.error is not None:
            # A copy (an exception raised again gathers tracebacks), with its cause.
            error = NoWorkersLeftError(str(self.error), stderr_tail=self.error.stderr_tail)
            error.__cause__ = self.error.__cause__
            return error
        if self.loop_error is not None:
            return ClusterClosedError(f"the cluster is closed: its I/O thread failed: "
                                      f"{self.loop_error!r}")
        return ClusterClosedError("the cluster is closed")
