"""The processes a worker's tasks started and left running end with the worker.

A task may start processes that outlive it: a ``subprocess.Popen`` never waited
for, or an executor that keeps its workers (loky's, behind a ``joblib.Parallel``
inside the task), whose own exit hooks the worker's ``os._exit`` skips.  The
worker sends each of them SIGTERM as it ends, by pid, as a batch system ends a
job's processes; it does not wait for them (multiprocessing's resource tracker,
which ignores SIGTERM, ends by itself once the worker is gone).
"""

from __future__ import annotations

import contextlib
import os
import signal


def end_descendants() -> None:
    """SIGTERM every process below this one (none found: nothing to do)."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, parents first, read from ``/proc`` (Linux; else none).

    All are found before any is signalled: a child that ends first would leave
    its own children to init, out of reach.
    """
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as listing:
                children.extend(int(number) for number in listing.read().split())
        except (OSError, ValueError):
            continue
    return children
