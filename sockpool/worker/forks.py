"""A process a task forks never goes on as a copy of the worker.

``os.fork()`` in a task copies the worker, the chunk it runs included.  A
child that returned from the task or raised out of it used to go on with the
chunk: it wrote into the worker's progress page (the master then took the
child's outcome for the worker's) and waited on the worker's sockets for
ever, so that a parent waiting for it hung.  It ends where it leaves the task
instead, as a ``multiprocessing`` fork child ends: an exception's traceback
printed (relayed home with what the worker writes below Python),
``SystemExit``'s code taken, its streams flushed, and no ``atexit`` handler
run (the worker's are the worker's: ``multiprocessing``'s would end the
worker's own pool processes, a ``TemporaryDirectory``'s remove its directory).
A map's slice stops after the task the child was forked in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

#: True in a process forked from the worker (set there, at the fork).
forked = False
#: The items of the map slice that runs (the runner sets it): a child stops at its task.
running_slice: Iterator[Any] | None = None


def watch() -> None:
    """Note, in every process forked from this one from now on, that it is a copy
    (the worker, from its start)."""
    os.register_at_fork(after_in_child=_note_fork)


def _note_fork() -> None:
    global forked
    forked = True
    if running_slice is not None:
        with contextlib.suppress(Exception):  # (a list's iterator: its end)
            running_slice.__setstate__(sys.maxsize)  # type: ignore[attr-defined]
    with contextlib.suppress(ValueError):  # Ctrl-C is the child's again, as in a script's
        signal.signal(signal.SIGINT, signal.default_int_handler)


def leave(error: BaseException | None = None) -> NoReturn:
    """End this forked child, which left its task with ``error`` (None: it returned)."""
    code = 0
    if isinstance(error, SystemExit):
        if isinstance(error.code, int) or error.code is None:
            code = error.code or 0
        else:  # (as Python does: the message to stderr, status 1)
            print(error.code, file=sys.stderr)
            code = 1
    elif error is not None:  # (from the task's frame on: the first is the runner's)
        trace = error.__traceback__
        error.with_traceback(trace.tb_next if trace is not None else None)
        sys.excepthook(type(error), error, error.__traceback__)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
