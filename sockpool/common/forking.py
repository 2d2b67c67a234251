"""Module-level locks that a forked child gets unlocked.

A thread of sockpool's (the capture's warm-up, a cluster starting under
``plan()``, the I/O thread writing output) may hold a module's lock when the
program forks (``os.fork``, a ``multiprocessing`` fork child): the child has
that thread no more, nothing would ever release the lock, and the child's first
sockpool call would wait for it for ever.  So each such lock is made here and
reset in the child, as the stdlib's ``logging`` does with its handlers' locks.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_locks: list[Any] = []


def module_lock() -> threading.Lock:
    """A lock for a module's globals, unlocked again in a forked child."""
    lock = threading.Lock()
    _locks.append(lock)
    return lock


def _unlock_in_child() -> None:
    for lock in _locks:
        lock._at_fork_reinit()  # (CPython's, for this: threading and logging use it)


os.register_at_fork(after_in_child=_unlock_in_child)
