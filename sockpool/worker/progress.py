"""How far the running chunk has got, in a page of memory the master maps (same host).

The master reads it only after the worker died, to tell the tasks of the chunk
that finished (their results died with the process) from the ones that were
running (they fail, or are retried) and the ones that never started (they run
elsewhere).  A page is ``chunk id, start, end`` (u64 each): tasks of that
chunk before ``start`` finished, those from ``end`` on never started, and one
in between was running.  Writing it costs a few stores per slice of tasks, not
per task (see :mod:`.runner`).
"""

from __future__ import annotations

import mmap
import os

#: ``end`` when the chunk's length is not known yet (its payload is loading).
TO_THE_END = (1 << 64) - 1
#: The name the master checks before it maps the page.
NAME = "sockpool.progress"  # not "sockpool-": that names shared-memory segments


class Progress:
    """This worker's progress page (Linux memfd); :meth:`describe` names it in the HELLO."""

    def __init__(self) -> None:
        self.fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, mmap.PAGESIZE)
        self._map = mmap.mmap(self.fd, mmap.PAGESIZE)
        self._words = memoryview(self._map).cast("Q")

    def describe(self) -> str:
        """``pid:fd``, for the master to open ``/proc/pid/fd/fd``."""
        return f"{os.getpid()}:{self.fd}"

    def mark(self, chunk: int, start: int, end: int) -> None:
        """Tasks ``[start, end)`` of ``chunk`` may be running; those before finished."""
        words = self._words
        words[0] = chunk
        words[1] = start
        words[2] = end


def create() -> Progress | None:
    """A progress page, or None where memfd is missing (the master then knows less)."""
    try:
        return Progress()
    except (AttributeError, OSError):
        return None
