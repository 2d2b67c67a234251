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
from collections.abc import Sequence
from typing import Any

from ..common.progress_log import (
    CHUNK,
    END,
    LOG_BYTES,
    LOG_OFFSET,
    NAME,
    OUTPUT_BYTES,
    OUTPUT_CHUNK,
    OUTPUT_LOG,
    OUTPUT_OFFSET,
    PAGE,
    PREVIOUS,
    PREVIOUS_BYTES,
    PREVIOUS_OFFSET,
    PREVIOUS_OUTPUT_BYTES,
    PREVIOUS_OUTPUT_LOG,
    REPORTED_LOG_BYTES,
    START,
    STARTED_US,
    TO_THE_END,
    WHOLE_RESULT,
    Page,
    record_header,
)
from ..common.shm import raw_view
from .state import raised_by_a_handler

__all__ = ["TO_THE_END", "Progress", "create", "make_page", "report_fields"]

#: A chunk keeps no more than this in its log; results beyond it die with the
#: worker as before (the master says so), rather than double a huge result's memory.
LOG_LIMIT = 256 * 1024 * 1024
#: Above this, the log's memory is given back when the next chunk starts; below,
#: its pages are reused (writing into fresh tmpfs pages costs about 3x more).
LOG_KEEP = 16 * 1024 * 1024
#: Where the two logs start in the memfd (the second's pages exist only once written).
SLOTS = (mmap.PAGESIZE, mmap.PAGESIZE + LOG_LIMIT)
assert SLOTS[1] + LOG_LIMIT <= OUTPUT_OFFSET
#: A chunk keeps no more than this of its OUTPUT messages in its output log (what
#: it writes past that is lost only if the worker dies with it unsent).
OUTPUT_LIMIT = 4 * 1024 * 1024
#: Where each slot's output log starts in the memfd.
OUTPUT_SLOTS = (OUTPUT_OFFSET, OUTPUT_OFFSET + OUTPUT_LIMIT)
#: Above this, output logs' memory is given back when the next chunk starts, as
#: the result logs' is past LOG_KEEP.
OUTPUT_KEEP = 1024 * 1024


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
        # Two logs, one at each of SLOTS: the running chunk's, and the last chunk's
        # while its RESULT may be unreceived (see begin).
        self._slot = 0
        self._words[LOG_OFFSET] = SLOTS[0]
        self._log_bytes = 0  # the running chunk's
        self._written = [0, 0]  # the most bytes each slot held since its memory was given back
        self._result_kept = False  # the chunk's whole RESULT is in its log
        self._output_bytes = 0  # the running chunk's output log
        self._output_written = [0, 0]  # as _written, for the output logs
        self._output_full = False  # a message was refused: none after it is kept

    @property
    def _offset(self) -> int:
        """Where the running chunk's log starts."""
        return SLOTS[self._slot]

    def describe(self) -> str:
        """``pid:fd``, for the master to open ``/proc/pid/fd/fd``."""
        return f"{os.getpid()}:{self.fd}"

    @property
    def holds_last_result(self) -> bool:
        """Whether the last chunk's whole RESULT is in its log, and both logs are
        small enough to keep their memory (see :meth:`begin`)."""
        return self._result_kept and max(self._written) <= LOG_KEEP

    def begin(self, chunk: int, keep_last_result: bool = False) -> None:
        """A chunk starts: its log is empty; any of its tasks may run.

        ``keep_last_result``: the master may not have the last chunk's RESULT
        yet (it is in that chunk's log: :attr:`holds_last_result`).  That log
        stays, as the page's previous chunk's, and this chunk's log goes in the
        other slot.  Otherwise the log starts over in the first slot, and the
        memory of logs that grew past :data:`LOG_KEEP` is given back.
        """
        words = self._words
        if keep_last_result:
            assert self.holds_last_result
            # Each word is written before the ones that would make it wrong:
            # whatever the master reads, the last RESULT stays findable.
            words[PREVIOUS_OFFSET], words[PREVIOUS_BYTES] = self._offset, self._log_bytes
            words[PREVIOUS_OUTPUT_LOG] = OUTPUT_SLOTS[self._slot]
            words[PREVIOUS_OUTPUT_BYTES] = self._output_bytes
            words[PREVIOUS] = words[CHUNK]
            self._slot = 1 - self._slot
        else:
            words[PREVIOUS] = 0
            self._slot = 0
            if max(self._written) > LOG_KEEP or max(self._output_written) > OUTPUT_KEEP:
                os.ftruncate(self.fd, mmap.PAGESIZE)
                self._written, self._output_written = [0, 0], [0, 0]
        # The id last: a record or a slice never names the wrong chunk.
        words[LOG_BYTES] = self._log_bytes = 0
        words[LOG_OFFSET] = self._offset
        words[START], words[END], words[STARTED_US] = 0, TO_THE_END, 0
        words[CHUNK] = chunk
        words[OUTPUT_BYTES] = self._output_bytes = 0
        words[OUTPUT_LOG] = OUTPUT_SLOTS[self._slot]
        words[OUTPUT_CHUNK] = chunk
        self._result_kept = self._output_full = False

    def mark(self, chunk: int, start: int, end: int, since: float = 0.0) -> None:
        """Tasks ``[start, end)`` of ``chunk`` may be running; those before finished
        (``since``: when these began, ``time.time()``, where the chunk is profiled)."""
        words = self._words
        words[CHUNK] = chunk
        words[STARTED_US] = int(since * 1e6)
        words[START] = start
        words[END] = end

    def keep(self, first: int, count: int, frames: Sequence[Any]) -> bool:
        """Append the packed results of ``count`` finished tasks from ``first`` on
        (``first`` :data:`WHOLE_RESULT`: the chunk's RESULT, as it is sent).

        False when the log would grow past its limit, or cannot be written
        (nothing is counted).
        """
        header = record_header(first, count, frames)
        size = len(header) + sum(memoryview(frame).nbytes for frame in frames)
        if self._log_bytes + size > LOG_LIMIT:
            return False
        try:
            _write_all(self.fd, [raw_view(part) for part in (header, *frames)],
                       self._offset + self._log_bytes)
        except OSError:  # out of memory for it, say: the record is not counted
            return False
        self._log_bytes += size
        self._written[self._slot] = max(self._written[self._slot], self._log_bytes)
        self._words[LOG_BYTES] = self._log_bytes  # last: the master reads only whole records
        self._result_kept = first == WHOLE_RESULT
        return True

    def keep_output(self, sent: int, frames: Sequence[Any]) -> None:
        """Append the running chunk's OUTPUT message number ``sent`` (from 0), as it is
        sent; past :data:`OUTPUT_LIMIT`, or if it cannot be written, it is not kept."""
        header = record_header(sent, 1, frames)
        size = len(header) + sum(memoryview(frame).nbytes for frame in frames)
        if self._output_full or self._output_bytes + size > OUTPUT_LIMIT:
            self._output_full = True  # (a later one kept would leave a hole)
            return
        try:
            _write_all(self.fd, [raw_view(part) for part in (header, *frames)],
                       OUTPUT_SLOTS[self._slot] + self._output_bytes)
        except OSError as error:
            if raised_by_a_handler(error):  # (sent from a task's print: the task's own)
                raise
            self._output_full = True
            return
        self._output_bytes += size
        self._output_written[self._slot] = max(self._output_written[self._slot],
                                               self._output_bytes)
        self._words[OUTPUT_BYTES] = self._output_bytes  # last: the master reads whole records


#: The most buffers one ``pwritev`` takes.
_IOV_MAX = os.sysconf("SC_IOV_MAX")


def _write_all(fd: int, parts: list[memoryview], offset: int) -> None:
    """Write ``parts`` one after another from ``offset``: one ``pwritev`` (a call
    cut short, by a signal say, goes on from where it stopped)."""
    parts = [part for part in parts if part.nbytes]
    while parts:
        written = os.pwritev(fd, parts[:_IOV_MAX], offset)
        offset += written
        while parts and written >= parts[0].nbytes:
            written -= parts.pop(0).nbytes
        if parts:
            parts[0] = parts[0][written:]


def create(fd: int | None = None) -> Progress | None:
    """A progress page (in ``fd``, if given), or None where memfd is missing (the
    master then knows less)."""
    try:
        return Progress(fd)
    except (AttributeError, OSError):
        return None


def make_page() -> int:
    """A memfd for a worker's progress page, made by its host's agent or its supervisor,
    which reads it once the worker ended (see :func:`report_fields`)."""
    fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
    os.ftruncate(fd, mmap.PAGESIZE)
    return fd


def report_fields(fd: int) -> dict[str, str]:
    """An ended worker's page words, and its chunk's log (at most
    :data:`REPORTED_LOG_BYTES`) followed by its output log, base64, for the exit
    report its host agent or supervisor sends; empty if they cannot be read.  (A
    remote worker is never told ``PAGE_READ``: it has no previous chunk's log.)"""
    try:
        words = os.pread(fd, PAGE.size, 0)
        page = Page.read(words)
        if page is None:
            return {"page": base64.b64encode(words).decode(), "log": ""}
        log_bytes = min(page.log_bytes, REPORTED_LOG_BYTES)
        log = os.pread(fd, log_bytes, page.log_offset) if log_bytes else b""
        output_bytes = min(page.output_bytes, OUTPUT_LIMIT)
        log += os.pread(fd, output_bytes, page.output_log) if output_bytes else b""
    except OSError:
        return {}
    return {"page": base64.b64encode(words).decode(), "log": base64.b64encode(log).decode()}
