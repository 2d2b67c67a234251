"""Waiting, on the caller's thread, for a cluster's workers to be ready: as it starts,
and in ``restart()``.  The I/O thread starts them and tells how it goes through the
pool's ``state_changed``; the caller raises what went wrong, or warns where
``min_workers`` lets the cluster start with fewer.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Protocol

from ..common.caller import user_stacklevel
from ..errors import ClusterClosedError, LaunchError
from .jobs import where
from .lifecycle import Lifecycle
from .records import WorkerRecord, command_note


class StartingPool(Protocol):
    """What the wait reads of the worker pool (``pool.WorkerPool``), and ``serving``."""

    state_changed: threading.Condition
    n_ready: int
    startup_errors: list[LaunchError]
    loop_error: BaseException | None
    lifecycle: Lifecycle
    workers: dict[int, WorkerRecord]
    serving: bool


def wait_for_workers(pool: StartingPool, count: int, timeout: float, minimum: int | None = None
                     ) -> None:
    """Block until ``count`` of ``pool``'s workers are ready.

    With ``minimum``, failures are accepted once every worker has either
    started or failed (or the time is up) and at least ``minimum`` are ready;
    a warning then names what failed.

    Raises:
        LaunchError: a worker failed to start, or too few connected in time.
        ClusterClosedError: the cluster was closed meanwhile (another thread).
    """
    deadline = time.monotonic() + timeout
    with pool.state_changed:
        while pool.n_ready < count:
            if pool.loop_error is not None and not pool.startup_errors:
                raise LaunchError(f"the cluster failed while starting: {pool.loop_error}")
            if not pool.lifecycle.wants_workers and not pool.startup_errors:
                raise pool.lifecycle.error or ClusterClosedError(
                    "the cluster was closed while its workers started")
            remaining = deadline - time.monotonic()
            starting = [r for r in list(pool.workers.values()) if r.state.starting]
            settled = remaining <= 0 or not pool.lifecycle.wants_workers or not starting
            if pool.startup_errors and (minimum is None or settled):
                if minimum is not None and pool.n_ready >= minimum:
                    _warn_partial(pool, count)
                    return
                raise pool.startup_errors[0]
            if remaining <= 0:
                if minimum is not None and pool.n_ready >= minimum:
                    _warn_partial(pool, count)
                    return
                detail = "; ".join(
                    f"worker {r.id} ({where(r.pid, r.host)}): "
                    + (r.process.status_note() or r.state.value)
                    + (f", stderr: {tail}" if (tail := r.process.stderr_tail()) else "")
                    for r in starting)
                command = starting[0].process.command if starting else None
                raise LaunchError(
                    f"only {pool.n_ready} of {count} workers connected within "
                    f"{timeout:g} s (connect_timeout); still waiting for: {detail}"
                    + command_note(command), command=command)
            pool.state_changed.wait(min(remaining, 0.5))
        pool.serving = True


def _warn_partial(pool: StartingPool, count: int) -> None:
    pool.serving = True
    reasons = list(dict.fromkeys(str(error).split("\n", 1)[0]
                                 for error in pool.startup_errors))
    reasons = reasons or ["some workers did not connect in time"]
    warnings.warn(f"the cluster started with {pool.n_ready} of {count} workers "
                  f"(min_workers=): {'; '.join(reasons)}", UserWarning,
                  stacklevel=user_stacklevel())
