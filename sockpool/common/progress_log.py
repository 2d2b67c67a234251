"""The layout of a local worker's progress page and result log, which master and worker share.

A worker writes it as its chunk runs (:mod:`sockpool.worker.progress`); the
master reads it once the worker is gone (:mod:`sockpool.dispatch.task_progress`).
It is one Linux memfd named :data:`NAME`.  Its first page holds :data:`PAGE`:
``chunk id, start, end, log offset, log bytes`` — tasks of that chunk before
``start`` finished, those from ``end`` on never started, one in between was
running — then ``previous chunk id, its log offset, its log bytes`` (below).
After the page come the result logs: records of finished tasks' results, each
:data:`RECORD` (``first, count, frames``), the frames' lengths (u64 each), then
the frames, which unpickle as a RESULT does, to ``(values, errors, 0.0, None)``,
offsets relative to ``first``.  Last, just before the worker sends its RESULT, comes
one record whose ``first`` is :data:`WHOLE_RESULT`: the RESULT's own frames, so
that a RESULT that dies unsent in the worker's queue is read from here instead.

A worker told that the master reads its page (the TASK flag ``PAGE_READ``) may
start its next chunk before the master has its last RESULT: that chunk's log,
whole RESULT last, then stays where it is as the *previous* chunk's, and the new
chunk's log goes beside it.  Previous chunk id 0 means there is none.

The page's last five words are ``output chunk id, output log offset, output
bytes, previous output log offset, previous output bytes``: a chunk's output log
(two slots from :data:`OUTPUT_OFFSET`, as the result logs have) holds each OUTPUT
message the chunk sent, as a record whose ``first`` counts them from 0 (its
frames as sent), so that what a task wrote reaches the user even if those
messages died unsent.  The previous chunk's stays with its result log.

Its fourteenth word is when the running stretch of tasks (from ``start``) began,
in microseconds of the worker's ``time.time()``, where the chunk is profiled
(else 0): the tasks before it ran before then.
"""

from __future__ import annotations

import base64
import binascii
import json
import mmap
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

#: The memfd's name (``/proc/PID/fd/N`` links to ``/memfd:NAME (deleted)``);
#: not "sockpool-", which names shared-memory segments.
NAME = "sockpool.progress"
#: ``end`` when the chunk's length is not known yet (its payload is loading).
TO_THE_END = (1 << 64) - 1
#: The ``first`` of the record that holds a whole RESULT message, frames as sent.
WHOLE_RESULT = (1 << 64) - 1
#: The page's words: chunk id, start, end, its log's offset and bytes; the
#: previous chunk's id, log offset and log bytes; the output log's chunk id, offset
#: and bytes, and the previous chunk's output log offset and bytes; when ``start`` began.
PAGE = struct.Struct("<14Q")
_EARLIER_PAGE = struct.Struct("<13Q")
#: Where the writer finds each word (the reader unpacks a :class:`Page`).
(CHUNK, START, END, LOG_OFFSET, LOG_BYTES, PREVIOUS, PREVIOUS_OFFSET, PREVIOUS_BYTES,
 OUTPUT_CHUNK, OUTPUT_LOG, OUTPUT_BYTES, PREVIOUS_OUTPUT_LOG, PREVIOUS_OUTPUT_BYTES,
 STARTED_US) = range(14)
#: The most of an ended worker's result log an exit report carries (the rest of its
#: finished tasks fail as "finished but lost", as over a chunk's limit); its output
#: log follows it in the report.
REPORTED_LOG_BYTES = 64 * 1024 * 1024
#: Where the output log starts in the memfd: past both result logs (the worker's
#: ``SLOTS``, 256 MiB each); a memfd's pages exist only once written.
OUTPUT_OFFSET = 1 << 30
#: A log record's head: the chunk offset of its first task, its task count,
#: and how many frames follow (their lengths come next).
RECORD = struct.Struct("<QQQ")
_SIZE = struct.Struct("<Q")


class Page(NamedTuple):
    """The page's words (see the module's docstring)."""

    chunk: int
    start: int
    end: int
    log_offset: int
    log_bytes: int
    previous: int
    previous_offset: int
    previous_bytes: int
    output_chunk: int
    output_log: int
    output_bytes: int
    previous_output_log: int
    previous_output_bytes: int
    started_us: int

    @classmethod
    def read(cls, words: bytes | memoryview | mmap.mmap) -> Page | None:
        """The page in ``words``; None if they are not one.  (A page of 13 words, as a
        worker of an earlier version writes it, has no ``started_us``: 0.)"""
        if len(words) >= PAGE.size:
            return cls(*PAGE.unpack_from(words))
        if len(words) >= _EARLIER_PAGE.size:
            return cls(*(*_EARLIER_PAGE.unpack_from(words), 0))
        return None


class Record(NamedTuple):
    """Finished tasks ``[first, first + tasks)`` of a chunk and their packed results."""

    first: int
    tasks: int
    frames: list[bytes]


def record_header(first: int, count: int, frames: Sequence[Any]) -> bytes:
    """The bytes before a record's frames."""
    sizes = [memoryview(frame).nbytes for frame in frames]
    return RECORD.pack(first, count, len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes)


class ExitReport(NamedTuple):
    """How a supervised worker ended (``sockpool.worker.supervisor``), as its report file says."""

    status: int
    how: str
    page: bytes | None  #: its progress page's words, where it had one
    log: bytes


def read_exit_report(path: str) -> ExitReport | None:
    """The exit report at ``path``; None while there is none, or if it does not parse."""
    try:
        with open(path) as stream:
            report = json.load(stream)
        page = base64.b64decode(report["page"]) if "page" in report else None
        return ExitReport(int(report["status"]), str(report["how"]), page,
                          base64.b64decode(report.get("log", "")))
    except (OSError, ValueError, TypeError, KeyError, binascii.Error):
        return None


def parse_records(log: bytes) -> list[Record]:
    """The whole records in ``log``; a torn or malformed tail is left out."""
    records: list[Record] = []
    offset = 0
    while offset + RECORD.size <= len(log):
        first, count, n_frames = RECORD.unpack_from(log, offset)
        offset += RECORD.size
        if offset + n_frames * _SIZE.size > len(log):
            break
        sizes = struct.unpack_from(f"<{n_frames}Q", log, offset)
        offset += n_frames * _SIZE.size
        if offset + sum(sizes) > len(log):
            break
        frames = []
        for size in sizes:
            frames.append(log[offset:offset + size])
            offset += size
        records.append(Record(first, count, frames))
    return records
