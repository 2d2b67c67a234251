"""Locks that a forked child gets unlocked.

A thread of sockpool's (the capture's warm-up, a plan's cluster starting, the
I/O thread writing output) may hold a lock when the program forks
(``os.fork``, a ``multiprocessing`` fork child): the child has that thread no
more, nothing would ever release the lock, and the child's first sockpool call
would wait for it for ever.  So each such lock is made here and reset in the
child, as the stdlib's ``logging`` does with its handlers' locks.
"""

from __future__ import annotations

import os
import threading
import weakref

_locks: weakref.WeakSet[threading.Lock] = weakref.WeakSet()


def fork_safe_lock() -> threading.Lock:
    """A lock (a module's, or an object's that a forked child may use) unlocked
    again in a forked child."""
    lock = threading.Lock()
    _locks.add(lock)
    return lock


def _unlock_in_child() -> None:
    for lock in list(_locks):
        lock._at_fork_reinit()  # type: ignore[attr-defined]  # (CPython's, for this)


os.register_at_fork(after_in_child=_unlock_in_child)
