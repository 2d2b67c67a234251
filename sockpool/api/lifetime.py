"""The backstops that stop a cluster nobody closed: at garbage collection and at exit.

The ``with`` block and ``close()`` are the way to stop a cluster; these catch
the rest.  A cluster garbage-collected while open is closed with a
``ResourceWarning``; every cluster still open when the interpreter exits is
closed by an exit hook, registered when the first cluster starts (importing
sockpool has no side effects), once one told ``shutdown(wait=False)`` has
finished what was submitted.  Neither touches a cluster from a forked child.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
import weakref
from typing import TYPE_CHECKING, Protocol

from ..common.forking import fork_safe_lock
from ..dispatch.lifecycle import ClusterState
from .callbacks import callbacks

if TYPE_CHECKING:
    from ..dispatch.dispatcher import Dispatcher


class Closable(Protocol):
    """What the exit hook needs of a cluster."""

    owner_pid: int

    def close(self) -> None:
        """Stop the cluster now."""


live_clusters: weakref.WeakSet[Closable] = weakref.WeakSet()
#: Each open cluster's engine, for questions about what the process runs.
_engines: weakref.WeakKeyDictionary[Closable, Dispatcher] = weakref.WeakKeyDictionary()
_exit_hook_lock = fork_safe_lock()
_exit_hook_registered = False


def forget(cluster: Closable, callbacks_within: float | None) -> None:
    """``cluster`` closed: off the exit hook's list, once the done-callbacks its tasks'
    futures queued have run (at most ``callbacks_within`` seconds; None: all)."""
    live_clusters.discard(cluster)
    callbacks.wait_idle(callbacks_within)


def _close_all_at_exit() -> None:
    for cluster in list(live_clusters):
        if cluster.owner_pid != os.getpid():  # a forked child leaves its parent's alone
            continue
        engine = _engines.get(cluster)
        if (engine is not None and engine.lifecycle.drain_at_exit
                and engine.lifecycle.state is ClusterState.DRAINING):
            # shutdown(wait=False) promised its submitted tasks would finish: the
            # interpreter waits for them, as concurrent.futures' executors make it do.
            # (Not for a shutdown(wait=True) that a Ctrl-C cut short: that one ends.)
            with contextlib.suppress(KeyboardInterrupt):  # (Ctrl-C: stop them now)
                engine.lifecycle.closed.wait()
        cluster.close()


def register_exit_hook() -> None:
    """Close the clusters left open when the interpreter exits (once per process)."""
    # Registered when the first cluster starts, not at import: importing
    # sockpool has no side effects.
    global _exit_hook_registered
    with _exit_hook_lock:
        if not _exit_hook_registered:
            atexit.register(_close_all_at_exit)
            _exit_hook_registered = True


def close_forgotten(dispatcher: Dispatcher, description: str, owner_pid: int) -> None:
    """Finalizer of a cluster garbage-collected while open."""
    if os.getpid() != owner_pid:  # a forked child must not stop its parent's workers
        return
    if not dispatcher.lifecycle.closed.is_set():
        try:  # (warnings made errors, -W error or pytest's, must not keep the workers)
            warnings.warn(f"unclosed {description}; use 'with Cluster(...)' or call close()",
                          ResourceWarning, stacklevel=2)
        finally:
            dispatcher.close(cancel=True, wait=True)


def watch(cluster: Closable, dispatcher: Dispatcher, description: str
          ) -> weakref.finalize[[Dispatcher, str, int], Closable]:
    """Put a new cluster under both backstops; returns its finalizer (detach it on close)."""
    register_exit_hook()
    finalizer = weakref.finalize(cluster, close_forgotten, dispatcher, description, os.getpid())
    finalizer.atexit = False  # the exit hook closes it without a warning
    live_clusters.add(cluster)
    _engines[cluster] = dispatcher
    return finalizer


def open_engines() -> list[Dispatcher]:
    """The engines of this process's clusters that are open (not closed, nor closing)."""
    return [engine for cluster, engine in list(_engines.items())
            if cluster in live_clusters and engine.lifecycle.takes_work]
