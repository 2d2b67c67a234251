"""Reading a local worker's progress page: how far its chunk got when it died, and its results.

The worker notes in a memfd (layout: :mod:`sockpool.common.progress_log`)
which tasks of its chunk may be running, and keeps the results of those it
finished in the log after the page.  The master opens it when the worker says
HELLO, keeps it open, and reads it once the process is gone, so that it
delivers what finished, fails the running task only, requeues the tasks that
never started, and never runs a task twice.  A remote worker's host agent
reads it instead, and reports it with the worker's exit
(:meth:`~sockpool.launchers.base.WorkerProcess.progress_report`).
"""

from __future__ import annotations

import mmap
import os
from typing import NamedTuple

from ..common import codec, protocol
from ..common.progress_log import (
    NAME,
    REPORTED_LOG_BYTES,
    WHOLE_RESULT,
    Page,
    Record,
    parse_records,
)
from ..common.protocol import Batch
from ..launchers.base import WorkerProcess
from .jobs import Chunk, Payload

_LINK = f"/memfd:{NAME}"


class ChunkProgress(NamedTuple):
    """How far a chunk got on a worker that is gone, as offsets in the chunk.

    Tasks before ``kept`` finished and their results are in ``records``; from
    ``kept`` to ``start`` they finished but their results died with the worker;
    from ``start`` to ``end`` one was running; from ``end`` on none started.
    ``result``: the chunk's whole RESULT, as the worker was about to send it (its
    frames), when it got that far: then nothing else counts.  ``started``: when
    the tasks from ``start`` began (``time.time()`` on the worker's clock), where
    the chunk was profiled, else 0.
    """

    records: list[Record]
    kept: int
    start: int
    end: int
    result: list[bytes] | None = None
    started: float = 0.0

    def sent_result(self, chunk: Chunk) -> SentResult | None:
        """The kept RESULT of ``chunk`` as the I/O thread would have received it, if
        it is one (a cancelled chunk's is not: the chunk is dropped as the job was)."""
        if self.result is None:
            return None
        try:
            head, body = protocol.parse(self.result[0])
            times = None
            if head.flags & protocol.Flag.PROFILE:
                times, body = protocol.split_stamps(body)
        except protocol.ProtocolError:
            return None
        if (head.kind is not protocol.Kind.RESULT or head.ident != chunk.id
                or head.flags & (protocol.Flag.CANCELLED | protocol.Flag.SHARED)):
            return None
        frames = list(self.result[1:])
        return SentResult((body, frames), times, len(body) + sum(len(f) for f in frames))


class SentResult(NamedTuple):
    """A RESULT read back from a lost worker's log: what the I/O thread hands on, the
    tasks' times if it was profiled, and its size."""

    payload: Payload
    times: protocol.TaskTimes | None
    nbytes: int


class ProgressPage:
    """One worker's progress page and result log: a local worker's mapped
    read-only and read once it is gone, or what a remote one's host reported."""

    def __init__(self, fd: int | None, mapping: mmap.mmap | None,
                 report: tuple[bytes, bytes] | None = None) -> None:
        self._fd = fd  # kept open: the log outlives the worker only through it
        self._mapping = mapping
        self._report = report

    @classmethod
    def reported(cls, process: WorkerProcess) -> ProgressPage | None:
        """What the host of a remote worker that ended read for the master; None if nothing."""
        report = process.progress_report() if process.poll() is not None else None
        return cls(None, None, report) if report is not None else None

    @classmethod
    def open(cls, description: object) -> ProgressPage | None:
        """Open the page a HELLO named (``pid:fd``); None if it is not one, or unreachable."""
        if not isinstance(description, str):
            return None
        try:
            pid, fd = (int(part) for part in description.split(":"))
            path = f"/proc/{pid}/fd/{fd}"
            handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (ValueError, OSError):
            return None
        try:
            if (os.readlink(path).removesuffix(" (deleted)") != _LINK
                    or os.fstat(handle).st_size < mmap.PAGESIZE):
                raise OSError("not a progress page")
            page = cls(handle, mmap.mmap(handle, mmap.PAGESIZE, mmap.MAP_SHARED,
                                         mmap.PROT_READ))
        except OSError:
            os.close(handle)
            return None
        return page

    def close(self) -> None:
        """Unmap it and close it."""
        if self._mapping is not None:
            self._mapping.close()
        if self._fd is not None:
            os.close(self._fd)

    def _page(self) -> Page | None:
        if self._report is not None:
            return Page.read(self._report[0])
        assert self._mapping is not None
        return Page.read(self._mapping)

    def previous_chunk(self) -> int:
        """The id of the chunk whose RESULT the worker kept while it ran the next one
        (told ``PAGE_READ``); 0 if none.  Read once the worker is gone."""
        page = self._page()
        if page is None or self._report is not None:  # (a reported page is never told)
            return 0
        return page.previous

    def previous_result(self, chunk: Chunk) -> SentResult | None:
        """The RESULT of ``chunk``, the :meth:`previous_chunk`, as the I/O thread
        hands one on; None if it cannot be read."""
        page = self._page()
        if page is None or page.previous != chunk.id or self._report is not None:
            return None
        _, result = self._records(chunk, page.previous_offset, page.previous_bytes)
        return ChunkProgress([], chunk.resume, chunk.count, chunk.count, result
                             ).sent_result(chunk)

    def output_after(self, chunk: Chunk, received: int) -> list[Batch]:
        """What ``chunk``, the one the worker ran, wrote in its OUTPUT messages from
        number ``received`` on (those that died unsent with the worker), from its
        output log.  Read once the worker is gone."""
        page = self._page()
        if page is None or page.output_chunk != chunk.id:
            return []
        if self._report is not None:  # after the result log, as its host read them
            start = min(page.log_bytes, REPORTED_LOG_BYTES)
            return _batches(self._report[1][start:start + page.output_bytes], received)
        return _batches(self._read(page.output_log, page.output_bytes), received)

    def previous_output_after(self, chunk: Chunk, received: int) -> list[Batch]:
        """:meth:`output_after` for the :meth:`previous_chunk`."""
        page = self._page()
        if page is None or page.previous != chunk.id or self._report is not None:
            return []
        return _batches(self._read(page.previous_output_log, page.previous_output_bytes),
                        received)

    def _read(self, offset: int, nbytes: int) -> bytes:
        try:
            assert self._fd is not None
            return os.pread(self._fd, nbytes, offset) if nbytes else b""
        except OSError:
            return b""

    def ran_all(self, chunk: Chunk) -> bool:
        """Whether the worker, still running, has run every task of ``chunk`` (and
        writes its RESULT); read as it goes, a hint, not what :meth:`where` tells."""
        page = self._page() if self._mapping is not None else None
        return page is not None and page.chunk == chunk.id and page.start >= chunk.count

    def where(self, chunk: Chunk) -> ChunkProgress:
        """How far ``chunk`` got.  Read once the worker is gone.

        A page naming another chunk means this one never started (the worker
        runs its chunks in order; one whose RESULT it kept while it started
        the next is :meth:`previous_result`).
        """
        page = self._page()
        if page is None:
            return ChunkProgress([], chunk.resume, chunk.resume, chunk.count)
        if page.chunk != chunk.id:
            return ChunkProgress([], chunk.resume, chunk.resume, chunk.resume)
        records, result = self._records(chunk, page.log_offset, page.log_bytes)
        kept = records[-1].first + records[-1].tasks if records else chunk.resume
        start = max(kept, min(page.start, chunk.count))
        return ChunkProgress(records, kept, start, max(start, min(page.end, chunk.count)),
                             result, page.started_us / 1e6)

    def _records(self, chunk: Chunk, offset: int, log_bytes: int
                 ) -> tuple[list[Record], list[bytes] | None]:
        """The records of the log at ``offset`` that continue the chunk from
        ``chunk.resume``, in order, and the frames of its whole RESULT if the
        worker kept that too."""
        if self._report is not None:
            # (a remote worker's host read it from there; its output log follows)
            log = self._report[1][:min(log_bytes, REPORTED_LOG_BYTES)]
        else:
            try:
                assert self._fd is not None
                log = os.pread(self._fd, log_bytes, offset) if log_bytes else b""
            except OSError:
                return [], None
        records: list[Record] = []
        expected = chunk.resume
        for record in parse_records(log):
            if record.first == WHOLE_RESULT and record.frames:
                return records, record.frames
            if record.first != expected or record.tasks < 1 or (
                    record.first + record.tasks > chunk.count):
                break
            records.append(record)
            expected += record.tasks
        return records, None


def _batches(log: bytes, received: int) -> list[Batch]:
    """The output batches in an output log, from message number ``received`` on."""
    batches = []
    for record in parse_records(log):
        if record.first < received or not record.frames:
            continue
        try:
            _, body = protocol.parse(record.frames[0])
            batches.append(codec.loads(body, record.frames[1:]))
        except Exception:  # (a class its warning names is gone, say): the rest still
            continue
    return batches
