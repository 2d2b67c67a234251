"""Whether this process is a sockpool worker.

The worker's entry point marks its process (:func:`mark_worker`) before it runs
anything; the caller's side reads it (:func:`in_worker`), so that inside a task
the plan is sequential: a nested ``sockpool.par_map`` runs in the worker and
never starts a cluster of clusters.  A module flag, not an environment
variable, so that it holds whichever launcher started the worker and does not
leak into programs a task starts.
"""

from __future__ import annotations

_worker_id: int | None = None


def mark_worker(worker_id: int) -> None:
    """Record that this process is a sockpool worker (its entry point calls it)."""
    global _worker_id
    _worker_id = worker_id


def in_worker() -> bool:
    """Whether this process is a sockpool worker (also true in a child it forked)."""
    return _worker_id is not None


def worker_id() -> int | None:
    """This worker's id in its cluster (None outside a worker)."""
    return _worker_id
