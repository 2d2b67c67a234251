"""How far the running chunk got, and what it finished, in memory the master can read (same host).

The master reads it only after the worker died: the results of the tasks the
chunk finished are delivered from it (they would otherwise die with the
process), the task that was running fails (or is retried), and the tasks
that never started run elsewhere.  Its layout: :mod:`sockpool.common.progress_log`.

Writing it costs a few stores per slice of tasks, and one pickle and one
``pwrite`` per slice that has tasks after it (see :mod:`.runner`), not per task.
"""

from __future__ import annotations

import base64
import mmap
import os
import pickle
import struct
from collections.abc import Sequence
from typing import Any

from ..common.progress_log import NAME, PAGE, TO_THE_END, record_header

__all__ = ["TO_THE_END", "Progress", "create", "make_page", "report_fields"]

#: A chunk keeps no more than this in its log; results beyond it die with the
#: worker as before (the master says so), rather than double a huge result's memory.
LOG_LIMIT = 256 * 1024 * 1024
#: The most of an ended worker's log an exit report carries (the rest of its
#: finished tasks fail as "finished but lost", as over a chunk's limit).
REPORTED_LOG_BYTES = 64 * 1024 * 1024
#: Above this, the log's memory is given back when the next chunk starts; below,
#: its pages are reused (writing into fresh tmpfs pages costs about 3x more).
LOG_KEEP = 16 * 1024 * 1024


class Progress:
    """This worker's progress page and result log; :meth:`describe` names it in the HELLO.

    Args:
        fd: the memfd a remote host's agent made for it (the agent reads it once
            this worker ended, and tells the master); None: make one here.
    """

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
        else:
            os.set_inheritable(fd, False)  # the tasks' own child processes get none
        self.fd = fd
        os.ftruncate(self.fd, mmap.PAGESIZE)
        self._map = mmap.mmap(self.fd, mmap.PAGESIZE)
        self._words = memoryview(self._map).cast("Q")
        self._log_bytes = 0  # of the running chunk
        self._file_bytes = mmap.PAGESIZE

    def describe(self) -> str:
        """``pid:fd``, for the master to open ``/proc/pid/fd/fd``."""
        return f"{os.getpid()}:{self.fd}"

    def begin(self, chunk: int, start: int) -> None:
        """A chunk starts at task ``start``: its log is empty; any task from there on may run."""
        self._words[3] = self._log_bytes = 0  # before the id: a record never names the wrong chunk
        if self._file_bytes > mmap.PAGESIZE + LOG_KEEP:
            os.ftruncate(self.fd, mmap.PAGESIZE)
            self._file_bytes = mmap.PAGESIZE
        self.mark(chunk, start, TO_THE_END)

    def mark(self, chunk: int, start: int, end: int) -> None:
        """Tasks ``[start, end)`` of ``chunk`` may be running; those before finished."""
        words = self._words
        words[0] = chunk
        words[1] = start
        words[2] = end

    def keep(self, first: int, count: int, frames: Sequence[Any]) -> bool:
        """Append the packed results of ``count`` finished tasks from ``first`` on.

        False when the log would grow past :data:`LOG_LIMIT` (nothing is written).
        """
        header = record_header(first, count, frames)
        size = len(header) + sum(memoryview(frame).nbytes for frame in frames)
        if self._log_bytes + size > LOG_LIMIT:
            return False
        offset = mmap.PAGESIZE + self._log_bytes
        for part in (header, *frames):
            offset = _write_all(self.fd, _flat(part), offset)
        self._log_bytes += size
        self._file_bytes = max(self._file_bytes, offset)
        self._words[3] = self._log_bytes  # last: the master reads only whole records
        return True


def _flat(frame: Any) -> memoryview:
    """A frame's bytes as one flat view (a Fortran-ordered array's buffer too)."""
    if isinstance(frame, pickle.PickleBuffer):
        return frame.raw()
    return memoryview(frame).cast("B")


def _write_all(fd: int, data: memoryview, offset: int) -> int:
    """``pwrite`` all of ``data`` at ``offset``; the offset after it."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
    return offset


def create(fd: int | None = None) -> Progress | None:
    """A progress page (in ``fd``, if given), or None where memfd is missing (the
    master then knows less)."""
    try:
        return Progress(fd)
    except (AttributeError, OSError):
        return None


def make_page() -> int:
    """A memfd for a worker's progress page, made by its host's agent (see :func:`read_back`)."""
    fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
    os.ftruncate(fd, mmap.PAGESIZE)
    return fd


def report_fields(fd: int) -> dict[str, str]:
    """An ended worker's page words and log (at most :data:`REPORTED_LOG_BYTES`), base64,
    for the exit report its host agent or supervisor sends; empty if they cannot be read."""
    try:
        words = os.pread(fd, PAGE.size, 0)
        log_bytes = PAGE.unpack(words)[3] if len(words) == PAGE.size else 0
        log = os.pread(fd, min(log_bytes, REPORTED_LOG_BYTES), mmap.PAGESIZE) if log_bytes else b""
    except (OSError, struct.error):
        return {}
    return {"page": base64.b64encode(words).decode(), "log": base64.b64encode(log).decode()}
