"""The wire vocabulary between the master and its workers.

A message is one frame, or more when it carries large buffers.  The first
frame starts with a fixed 16-byte header::

    version u8 | kind u8 | flags u16 | job u32 | ident u64      (little-endian)

and the rest of that frame is the kind's *body*.  Pickle-5 out-of-band buffers
(large arrays) follow as frames of their own, so they are never copied into
the first one; small messages are a single frame, which zmq moves fastest.
Control bodies (HELLO) are JSON, so that nothing is ever unpickled from a peer
that has not proved it holds the cluster's token.

Each worker opens two connections, told apart by their zmq routing id:

* the *data* connection (``b"D" + id``), used only by the worker's main thread:
  HELLO, then TASK, EXPORT, FORGET, ACK and SHUTDOWN in, RESULT, OUTPUT and a
  timed chunk's STARTED out, RELEASE both ways;
* the *control* connection (``b"C" + id``), used by the worker's watchdog
  thread: HELLO, HEARTBEAT both ways, CANCEL, RECLAIM and SHUTDOWN in,
  RECLAIM's answer out.  It keeps answering while a task holds the main thread.

============  =========  ==========================================================
kind          direction  body of the first frame (then out-of-band buffer frames)
============  =========  ==========================================================
HELLO         w -> m     JSON: token, worker id, pid, host, python, version, its
                         shared-memory probe and progress page (where it has them)
TASK          m -> w     task meta (digest, first task index, function length and
                         buffer count, seed, RESULTs received from this worker,
                         tasks of the chunk to skip), function pickle (empty when
                         the worker has it cached), arguments pickle; then the
                         function's buffers (each the 16-byte digest of one the
                         worker holds, or the buffer), then the arguments' buffers
RESULT        w -> m     [task times, when flagged PROFILE] outcome pickle: (values,
                         errors, seconds, relay batch[, the slices kept in the
                         progress page, as they are: (start, count, frames)])
ACK           m -> w     (empty; ``ident``: RESULTs received from this worker)
STARTED       w -> m     (empty; ``ident``: a chunk flagged ``TIMED``, loaded, whose
                         tasks start now: their time limit counts from here)
OUTPUT        w -> m     relay batch pickle: what a running chunk wrote so far
RELEASE       both       serials (u64 each) of the sender's mappings of the
                         receiver's shared-memory segments that are gone
EXPORT        m -> w     the names' length (u32) and the names (a JSON list), then a
                         pickle of a dict of values by those names
FORGET        m -> w     digest of a cached function to drop
CANCEL        m -> w     (empty; ``job`` says which)
RECLAIM       both       m -> w: give back chunk ``ident``, queued here, for an idle
                         worker; w -> m: the answer, flag ``GIVEN_BACK`` when it will
                         not run here (it never started), none when it has started
HEARTBEAT     both       m -> w: (empty; ``ident``: the master's clock, ns); w -> m:
                         the echoed clock, the worker's resident and CPU use
                         (``ident``: the worker's clock, ns) -- see ``ClockReply``
SHUTDOWN      m -> w     (empty)
============  =========  ==========================================================

A worker starts no task while a RESULT it sent may still sit unsent in its own
process (in libzmq's queue), where its death would take it along: it waits
until the master says it received every RESULT, in a TASK's meta (free: a
TASK sent after them) or, when it already holds the next chunk and the master
sends it none in the turn that read the RESULT, in an ACK.
A TASK flagged ``PAGE_READ`` (the master reads the worker's progress page)
needs no wait for the last RESULT, which stays in the page's log meanwhile.

A TASK flagged ``PROFILE`` asks for the time of each task: the RESULT's body
then starts with them (``TaskTimes``, ``stamp_block``), on the worker's clock;
the master's heartbeats measure the offset between the two clocks.

A TASK or RESULT flagged ``SHARED`` carries its large buffers in shared
memory segments (see ``shm.py``): the frames after the function's buffers
(TASK: one per segment, a kept argument's among them) or the last frame
(RESULT) are the segments' descriptors.
"""

from __future__ import annotations

import array
import enum
import json
import struct
import time
from typing import Any, NamedTuple

#: Bumped with every change a peer of the version before would misread (4: STARTED,
#: and EXPORT's names): a message of another version is dropped, never acted on.
PROTOCOL_VERSION = 4

_HEADER = struct.Struct("<BBHIQ")
HEADER_SIZE = _HEADER.size
_TASK_META = struct.Struct("<16sQIHB16sQQII")

DATA_PREFIX = b"D"
CONTROL_PREFIX = b"C"

#: A message of one frame below this size goes in one plain (copying) send, cheaper
#: than ``send_multipart``'s loop; larger buffers go zero-copy.
COPY_LIMIT = 64 * 1024

#: Added to a task's time limit (``timeout=``) for the trip back from its worker;
#: the sequential plan adds it too, so that a task ends the same under every plan.
TIMEOUT_SLACK = 0.05

#: The chunks a worker remembers having taken, to refuse a RECLAIM of one: the
#: master asks back only from a worker holding fewer (it can have taken only
#: those it holds since), so that a chunk that ran is never given back.
RECLAIM_MEMORY = 1024

#: What a chunk wrote, in the order it wrote it, as OUTPUT and RESULT carry it: a list
#: of ``(kind, value)`` events, one of the kinds below.  Plain values, so the worker's
#: pickler never ships code for it.
Batch = list[tuple[int, Any]]
#: Text written to ``sys.stdout`` (consecutive writes joined into one event).
STDOUT = 0
#: Text written to ``sys.stderr``, likewise.
STDERR = 1
#: A warning: ``(message, category, filename, lineno, module)``; module: the ``__name__``
#: it came from, as the filters see it (None where the worker could not tell).
WARNING = 2
#: A log record, as the dict of fields ``logging.makeLogRecord`` rebuilds it from.
RECORD = 3


class Kind(enum.IntEnum):
    """Message kinds."""

    HELLO = 1
    TASK = 2
    RESULT = 3
    EXPORT = 4
    FORGET = 5
    CANCEL = 6
    HEARTBEAT = 7
    SHUTDOWN = 8
    OUTPUT = 9
    RELEASE = 10
    ACK = 11
    RECLAIM = 12
    STARTED = 13


class Flag:
    """TASK and RESULT flags: bits of a plain ``int``.

    Not an ``enum.IntFlag``: its ``&`` and ``|`` build a member each time (about
    2 µs), and a round trip tested and combined flags a dozen times.
    """

    NONE = 0
    #: Call ``fn(x)`` for each item (a map over one iterable): what a worker does
    #: unless told MAP_STAR or CALL (it reads neither this bit nor its absence).
    MAP_ONE = 1
    #: Call ``fn(*x)`` for each item (starmap, or a map over several iterables).
    MAP_STAR = 2
    #: Call ``fn(*args, **kwargs)`` once (submit, run_on_all, setup).
    CALL = 4
    #: Stop the chunk at its first failing task.
    STOP_ON_ERROR = 8
    #: RESULT: the chunk was skipped or interrupted because its job was cancelled.
    CANCELLED = 16
    #: The message's large buffers are in shared memory segments (see the module's
    #: docstring for which frames describe them).
    SHARED = 32
    #: TASK: time each task; RESULT: the body starts with those times (``stamp_block``).
    PROFILE = 64
    #: RESULT: the worker's resident memory is above the cluster's ``max_worker_memory``.
    OVER_MEMORY = 128
    #: TASK: the master reads the worker's progress page should it die, so the
    #: worker may start this chunk before the master has its last RESULT (kept
    #: there: see :mod:`sockpool.common.progress_log`).
    PAGE_READ = 256
    #: RESULT: the task function's payload as received does not match its digest (a
    #: captured buffer changed in place while it waited to be sent): it must not
    #: stay cached under that digest, and the master sends it anew next time.
    STALE_FUNCTION = 512
    #: RECLAIM (w -> m): the chunk will not run here; the master sends it elsewhere.
    #: RESULT: the chunk was skipped as given back (its copy sent elsewhere delivers).
    GIVEN_BACK = 1024
    #: RESULT: nothing ran: the TASK named by digest a function buffer the worker
    #: did not hold as named (see ``dispatch/function_mirror.py``); it is sent again.
    MISSING_BUFFERS = 2048
    #: TASK: a timed chunk: say STARTED once its function and arguments are loaded
    #: and its tasks start (their time limit counts from then).
    TIMED = 4096


_KINDS = {kind.value: kind for kind in Kind}


class Header(NamedTuple):
    """A decoded message header."""

    kind: Kind
    flags: int
    job: int
    ident: int


class ProtocolError(ValueError):
    """A frame that does not parse; the message is dropped, never acted on."""


def header(kind: Kind, flags: int = 0, job: int = 0, ident: int = 0) -> bytes:
    """Encode a header (a whole message for kinds without a body)."""
    return _HEADER.pack(PROTOCOL_VERSION, kind, flags, job, ident)


def parse(frame: bytes) -> tuple[Header, memoryview]:
    """Split a first frame into its decoded header and its body, rejecting anything malformed."""
    if len(frame) < HEADER_SIZE:
        raise ProtocolError(f"first frame of {len(frame)} bytes, shorter than a header")
    version, kind, flags, job, ident = _HEADER.unpack_from(frame)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    known = _KINDS.get(kind)
    if known is None:
        raise ProtocolError(f"unknown message kind {kind}")
    # Flags stay a plain int: building an IntFlag costs more than the whole parse.
    return Header(known, flags, job, ident), memoryview(frame)[HEADER_SIZE:]


#: TASK seed modes: none; an explicit seed (key: task index); the cluster's (key: call, index).
SEED_NONE, SEED_CALL, SEED_CLUSTER = 0, 1, 2


def task_frame(head: bytes, digest: bytes, first_index: int, fn_inband: bytes,
               fn_buffers: int, arguments: Any, seed: tuple[int, int | None] | None = None,
               acked: int = 0, skip: int = 0, careful_until: int = 0) -> bytes:
    """The first frame of a TASK: header, meta, function pickle, arguments pickle.

    The function's out-of-band buffers (``fn_buffers`` of them) are the frames
    right after it, before the arguments' own buffers.  ``seed`` is
    ``(entropy, call number or None)`` for a seeded job.  ``acked`` counts the
    RESULTs the master has received from this worker; the worker runs the
    chunk's tasks from ``skip`` on (those before were settled elsewhere), and
    those before ``careful_until`` one at a time, each result kept in its progress
    page as it comes (a worker died running them: a death again is to name the
    one task it died in, and lose none that finished).
    """
    if seed is None:
        mode, entropy, call = SEED_NONE, 0, 0
    else:
        entropy, number = seed
        mode, call = (SEED_CALL, 0) if number is None else (SEED_CLUSTER, number)
    meta = _TASK_META.pack(digest, first_index, len(fn_inband), fn_buffers, mode,
                           entropy.to_bytes(16, "little"), call, acked, skip, careful_until)
    return b"".join((head, meta, fn_inband, arguments))


_ACKED_AT = _TASK_META.size - 16  # where a TASK body's ``acked`` field starts


def task_acked(body: memoryview) -> int:
    """The RESULTs the master had received when it sent this TASK (0 if the body is short)."""
    if len(body) < _TASK_META.size:
        return 0
    return int.from_bytes(body[_ACKED_AT:_ACKED_AT + 8], "little")


def ack_message(received: int) -> bytes:
    """An ACK: the master has received ``received`` RESULTs from this worker."""
    return header(Kind.ACK, 0, 0, received)


class Task(NamedTuple):
    """A decoded TASK body."""

    digest: bytes
    first_index: int
    fn_inband: memoryview
    fn_buffers: int
    arguments: memoryview
    seed: tuple[int, tuple[int, ...]] | None  # (entropy, spawn key before the task index)
    acked: int  # RESULTs the master had received from this worker when it sent this
    skip: int  # tasks at the start of the chunk not to run (settled already)
    careful_until: int  # tasks before this offset run one at a time, each kept


def parse_task(body: memoryview) -> Task:
    """Split a TASK body into its parts."""
    if len(body) < _TASK_META.size:
        raise ProtocolError("TASK body shorter than its meta")
    (digest, first_index, fn_len, fn_buffers, mode, entropy, call, acked,
     skip, careful_until) = _TASK_META.unpack_from(body)
    start = _TASK_META.size
    if start + fn_len > len(body):
        raise ProtocolError("TASK function payload runs past the frame")
    seed: tuple[int, tuple[int, ...]] | None = None
    if mode != SEED_NONE:
        seed = (int.from_bytes(entropy, "little"), (call,) if mode == SEED_CLUSTER else ())
    return Task(digest, first_index, body[start:start + fn_len], fn_buffers,
                body[start + fn_len:], seed, acked, skip, careful_until)


_STAMP_HEAD = struct.Struct("<II")


class TaskTimes(NamedTuple):
    """When a profiled chunk's tasks ran, on the worker's clock (``time.time()``).

    Tasks are timed in *spans*: a slow task is a span of its own, trivial ones
    share one (a millisecond or so of them), so timing costs a clock read per
    span, not per task.
    """

    spans: array.array[float]  # start, end of each span, flattened
    counts: array.array[int]  # tasks in each span, in order
    failed: list[int]  # offsets (in the chunk's run) of the tasks that failed

    @classmethod
    def empty(cls) -> TaskTimes:
        """No span yet."""
        return cls(array.array("d"), array.array("I"), [])


def stamp_block(times: TaskTimes) -> bytes:
    """What a PROFILE RESULT's body starts with: ``times``, packed."""
    return b"".join((_STAMP_HEAD.pack(len(times.counts), len(times.failed)),
                     times.spans.tobytes(), times.counts.tobytes(),
                     array.array("I", times.failed).tobytes()))


def split_stamps(body: memoryview) -> tuple[TaskTimes, memoryview]:
    """A PROFILE RESULT's body: its task times, and the rest of the body."""
    if len(body) < _STAMP_HEAD.size:
        raise ProtocolError("PROFILE RESULT shorter than its task times")
    spans, failures = _STAMP_HEAD.unpack_from(body)
    bounds = [_STAMP_HEAD.size]
    for size in (16 * spans, 4 * spans, 4 * failures):
        bounds.append(bounds[-1] + size)
    if bounds[-1] > len(body):
        raise ProtocolError("PROFILE RESULT's task times run past the frame")
    times = TaskTimes.empty()
    times.spans.frombytes(body[bounds[0]:bounds[1]])
    times.counts.frombytes(body[bounds[1]:bounds[2]])
    failed = array.array("I")
    failed.frombytes(body[bounds[2]:bounds[3]])
    times.failed.extend(failed)
    return times, body[bounds[3]:]


def clock_probe() -> bytes:
    """A HEARTBEAT from the master that carries its clock (``time.time_ns()``)."""
    return header(Kind.HEARTBEAT, 0, 0, time.time_ns())


_CLOCK_REPLY = struct.Struct("<Qqd")


class ClockReply(NamedTuple):
    """A worker's answer to a clock probe: its clock, the probe's, and its own usage."""

    worker_ns: int  # the worker's time.time_ns() when it answered
    probe_ns: int  # the master's, from the probe
    resident_bytes: int  # -1: unknown
    cpu_seconds: float  # user + system time of the worker process


def clock_reply(probe_ns: int, resident_bytes: int, cpu_seconds: float) -> bytes:
    """A worker's HEARTBEAT answering a probe sent at ``probe_ns``."""
    return (header(Kind.HEARTBEAT, 0, 0, time.time_ns())
            + _CLOCK_REPLY.pack(probe_ns, resident_bytes, cpu_seconds))


def parse_clock_reply(head: Header, body: memoryview) -> ClockReply | None:
    """The clock reply in a worker's HEARTBEAT, or None for a plain one."""
    if len(body) < _CLOCK_REPLY.size:
        return None
    return ClockReply(head.ident, *_CLOCK_REPLY.unpack_from(body))


_SERIAL = struct.Struct("<Q")


def release_message(serials: list[int]) -> bytes:
    """A RELEASE: the sender dropped its mappings of these segments of the receiver."""
    return header(Kind.RELEASE) + b"".join(_SERIAL.pack(serial) for serial in serials)


def parse_release(body: memoryview) -> list[int]:
    """The serials of a RELEASE body."""
    if len(body) % _SERIAL.size:
        raise ProtocolError("RELEASE body is not a whole number of serials")
    return [serial for (serial,) in _SERIAL.iter_unpack(body)]


def export_prefix(names: list[str]) -> bytes:
    """The start of an EXPORT message, before the pickle of its values: the names,
    so that a worker that cannot load the values knows which they were."""
    listed = json.dumps(names).encode()
    return header(Kind.EXPORT) + _NAMES_LENGTH.pack(len(listed)) + listed


def parse_export(body: memoryview) -> tuple[list[str], memoryview]:
    """An EXPORT body's names, and its pickle."""
    if len(body) < _NAMES_LENGTH.size:
        raise ProtocolError("EXPORT body without its names")
    (length,) = _NAMES_LENGTH.unpack_from(body)
    end = _NAMES_LENGTH.size + length
    try:
        names = json.loads(bytes(body[_NAMES_LENGTH.size:end]))
    except ValueError as exc:
        raise ProtocolError("EXPORT names are not a JSON list") from exc
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ProtocolError("EXPORT names are not a list of strings")
    return names, body[end:]


_NAMES_LENGTH = struct.Struct("<I")


def with_flags(frame: Any, flags: int) -> bytes:
    """A first frame with ``flags`` added to its header."""
    view = memoryview(frame)
    version, kind, old, job, ident = _HEADER.unpack_from(view)
    return _HEADER.pack(version, kind, old | flags, job, ident) + view[HEADER_SIZE:]


def data_identity(worker_id: int) -> bytes:
    """Routing id of a worker's data connection."""
    return DATA_PREFIX + worker_id.to_bytes(4, "little")


def control_identity(worker_id: int) -> bytes:
    """Routing id of a worker's control connection."""
    return CONTROL_PREFIX + worker_id.to_bytes(4, "little")


def parse_identity(identity: bytes) -> tuple[bytes, int]:
    """Split a routing id into its prefix and worker id."""
    if len(identity) != 5 or identity[:1] not in (DATA_PREFIX, CONTROL_PREFIX):
        raise ProtocolError("unknown routing id")
    return identity[:1], int.from_bytes(identity[1:], "little")
