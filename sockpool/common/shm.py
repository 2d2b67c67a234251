"""Shared memory for large buffers between processes on one machine.

A message whose out-of-band buffers add up to a megabyte or more
(``codec.SHARED_MIN_BYTES``) goes between the master and a worker on
the same machine as one small frame, the *descriptor* of a segment, instead of
the buffers themselves: the sender copies the buffers once into the segment
and the receiver maps it, so the bytes never cross a socket and the
receiver's arrays point straight into it.

A segment is an anonymous ``memfd``: it has no name in ``/dev/shm`` or any
other file system, so nothing is ever left behind; the kernel frees its pages
when the last process holding its descriptor or a mapping of it ends, crash
or not.  A receiver opens it as ``/proc/<owner pid>/fd/<fd>``, which only the
owner's user (or root) may do, and checks the memfd's name (random to its
pool) and its seals, so it can neither be shown another file nor be truncated
under a mapping (which would kill the reader with SIGBUS).

Ownership stays with the writer's :class:`SegmentPool`.  A segment returns to
the pool, to be written again, once the frame naming it is gone (the chunk it
carried finished) *and* every process it was lent to said RELEASE (its arrays
were garbage-collected) or is gone.  A reused segment is already faulted in
on both sides (the writer keeps a mapping of its own, the reader keeps its
mapping too), so a transfer through it costs one copy at memory speed.  Idle
segments and mappings go after :data:`IDLE_SECONDS`, so an idle cluster holds
no memory for them.  (A large argument sent again goes once into a segment of
its own, sealed against writing: see ``kept_segments.py``.)  The reader's side
is :mod:`sockpool.common.shm_reader`.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import pickle
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

#: Free segments unused for this long are closed (their memory given back).
IDLE_SECONDS = 5.0
#: Free segments kept for reuse, at most, in bytes.
CACHE_BYTES = 1024**3
#: Buffers start at multiples of this in a segment (what NumPy's SIMD loops like).
ALIGN = 64
#: Segment sizes are multiples of this, so that a slightly larger buffer reuses a segment.
GRANULE = 1024 * 1024

#: A segment's memfd name, which its readers check.
SEGMENT_NAME = "sockpool-{pool:016x}-{serial}"
# getattr: the constants exist on Linux only, and this module is imported everywhere.
RESIZE_SEALS = sum(getattr(fcntl, name, 0)
                   for name in ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL"))
WRITE_SEAL = getattr(fcntl, "F_SEAL_WRITE", 0)  # a kept segment's: readers map it privately
#: ``mmap.mmap``'s keyword that keeps it from holding a duplicate of the file's
#: descriptor for as long as it lives (Python 3.13+): one a mapping, kept results
#: and segments alike, would count against the open-file limit.
UNTRACKED: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
_HEAD = struct.Struct("<IIQQQI")  # owner pid, fd, pool id, serial, size, buffer count
_SPAN = struct.Struct("<QQ")  # offset, length


def available() -> bool:
    """Whether this platform has anonymous memory files (Linux)."""
    return (sys.platform.startswith("linux") and hasattr(os, "memfd_create")
            and hasattr(fcntl, "F_ADD_SEALS"))


def disabled_by_environment() -> bool:
    """``SOCKPOOL_SHARED_MEMORY=0`` in a worker's environment keeps its data on the socket
    (in the master's, every worker's)."""
    return os.environ.get("SOCKPOOL_SHARED_MEMORY", "1").strip().lower() in ("0", "false", "no")


class SharedFrame(bytes):
    """A segment's descriptor, sent as a message frame.

    While the owner holds this frame (in a chunk waiting for its result), the
    segment is not reused.
    """

    _release: Callable[[], None] | None = None

    def __del__(self) -> None:
        if self._release is not None:
            with contextlib.suppress(Exception):  # the pool may be gone at exit
                self._release()


class SharedMemoryError(OSError):
    """A descriptor that does not name a usable segment of its owner."""


class _Segment:
    __slots__ = ("fd", "framed", "holders", "idle_since", "mapping", "serial", "size")

    def __init__(self, fd: int, serial: int, size: int) -> None:
        self.fd = fd
        self.serial = serial
        self.size = size
        self.mapping: mmap.mmap | None = None  # the owner's own, made on first reuse
        self.framed = False  # a SharedFrame naming it is alive
        self.holders: set[Hashable] = set()  # readers that have not released it
        self.idle_since = 0.0


def raw_view(buffer: Any) -> memoryview:
    """A buffer's bytes as a flat memoryview (a PickleBuffer's too)."""
    if isinstance(buffer, pickle.PickleBuffer):
        return buffer.raw()
    return memoryview(buffer).cast("B")


def read_all(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes of a file from ``offset`` (a read returns 2 GiB at most)."""
    parts = []
    while length > 0:
        part = os.pread(fd, min(length, 1 << 30), offset)
        if not part:
            raise SharedMemoryError("a segment ended before its buffer did")
        parts.append(part)
        length -= len(part)
        offset += len(part)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class SegmentPool:
    """The segments one process writes, and their reuse.  Thread-safe."""

    def __init__(self) -> None:
        # os.urandom, as secrets.randbits does, without secrets' imports (hmac, hashlib).
        self._id = int.from_bytes(os.urandom(8), "little")
        self._lock = threading.Lock()
        self._serials = iter(range(1, 1 << 63))
        self._segments: dict[int, _Segment] = {}
        self._free: list[_Segment] = []  # oldest first
        self._unframed: deque[int] = deque()  # serials whose frames died (see unframe)
        self._closed = False
        self._probe: _Segment | None = None

    # -- writing -----------------------------------------------------------------------

    def frames_for(self, buffers: list[Any]) -> list[SharedFrame]:
        """The frames that carry ``buffers`` in one message: here, one segment's."""
        return [self.store(buffers)]

    def store(self, buffers: list[Any]) -> SharedFrame:
        """Copy ``buffers`` into a segment; the frame that names it, for one message."""
        views = [raw_view(buffer) for buffer in buffers]
        spans = []
        end = 0
        for view in views:
            spans.append((end, view.nbytes))
            end += -(-view.nbytes // ALIGN) * ALIGN
        segment = self._take(max(end, 1))
        try:
            if segment.mapping is not None:
                for (offset, length), view in zip(spans, views, strict=True):
                    segment.mapping[offset:offset + length] = view
            else:  # a new segment: writing beats faulting in a fresh mapping
                for (offset, _), view in zip(spans, views, strict=True):
                    _write_all(segment.fd, view, offset)
        except BaseException:
            self._give_back(segment)
            raise
        return releasing_frame(self._describe(segment, spans), self, segment.serial)

    def sealed_copy(self, view: memoryview) -> tuple[int, int, bytes]:
        """A new segment holding ``view``, sealed against writing too (readers map it
        privately): its fd, the caller's to close, its serial and its descriptor."""
        serial = next(self._serials)
        size = max(view.nbytes, 1)
        fd = os.memfd_create(SEGMENT_NAME.format(pool=self._id, serial=serial),
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            _write_all(fd, view, 0)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, RESIZE_SEALS | WRITE_SEAL)
        except BaseException:
            os.close(fd)
            raise
        return fd, serial, self._describe(_Segment(fd, serial, size), [(0, view.nbytes)])

    def _take(self, needed: int) -> _Segment:
        """A free segment of a fitting size (faulted in and mapped), or a new one."""
        with self._lock:
            if self._closed:  # (a call packing its arguments as the cluster closed)
                raise OSError("the cluster's shared memory is closed")
            self._apply_unframed()
            best: _Segment | None = None
            for candidate in self._free:
                if needed <= candidate.size <= 2 * needed + GRANULE and (
                        best is None or candidate.size < best.size):
                    best = candidate
            if best is not None:
                self._free.remove(best)
                best.framed = True
        if best is None:
            best = self._create(-(-needed // GRANULE) * GRANULE)
        elif best.mapping is None:
            best.mapping = mmap.mmap(best.fd, best.size, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                     **UNTRACKED)
        return best

    def _create(self, size: int) -> _Segment:
        serial = next(self._serials)
        fd = os.memfd_create(SEGMENT_NAME.format(pool=self._id, serial=serial),
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, RESIZE_SEALS)
        except BaseException:
            os.close(fd)
            raise
        segment = _Segment(fd, serial, size)
        segment.framed = True  # for the frame its creator is about to make
        with self._lock:
            self._segments[serial] = segment
        return segment

    def _describe(self, segment: _Segment, spans: list[tuple[int, int]]) -> bytes:
        head = _HEAD.pack(os.getpid(), segment.fd, self._id, segment.serial, segment.size,
                          len(spans))
        return head + b"".join(_SPAN.pack(*span) for span in spans)

    # -- lending -------------------------------------------------------------------------

    def lend(self, frame: bytes, holder: Hashable) -> None:
        """``frame``'s segment is being sent to ``holder``: kept until it releases it."""
        serial = _HEAD.unpack_from(frame)[3]
        with self._lock:
            segment = self._segments.get(serial)
            if segment is not None:
                segment.holders.add(holder)

    def release(self, serials: Iterable[int], holder: Hashable) -> None:
        """``holder`` no longer maps these segments (its RELEASE message)."""
        with self._lock:
            for serial in serials:
                segment = self._segments.get(serial)
                if segment is not None:
                    segment.holders.discard(holder)
                    self._maybe_free(segment)

    def forget(self, holder: Hashable) -> None:
        """``holder`` is gone: its mappings went with it."""
        with self._lock:
            for segment in list(self._segments.values()):
                if holder in segment.holders:
                    segment.holders.discard(holder)
                    self._maybe_free(segment)

    def unframe(self, serial: int) -> None:
        """The frame naming the segment is gone (its chunk finished)."""
        apply_when_free(self._lock, self._unframed, serial, self._apply_unframed)

    def _apply_unframed(self) -> None:
        """With the lock held: the segments whose frames died may be free."""
        while self._unframed:
            segment = self._segments.get(self._unframed.popleft())
            if segment is not None:
                segment.framed = False
                self._maybe_free(segment)

    def _give_back(self, segment: _Segment) -> None:
        with self._lock:
            segment.framed = False
            self._maybe_free(segment)

    def _maybe_free(self, segment: _Segment) -> None:
        """With the lock held: a segment nobody uses goes back on the free list."""
        if segment.framed or segment.holders or segment in self._free:
            return
        segment.idle_since = time.monotonic()
        self._free.append(segment)
        while sum(s.size for s in self._free) > CACHE_BYTES:
            self._close(self._free.pop(0))

    def mapped_bytes(self) -> int:
        """The size of the segments this process keeps mapped (resident: they count in
        its resident memory, though they are the transport's, not its own)."""
        with self._lock:
            return sum(s.size for s in self._segments.values() if s.mapping is not None)

    def copies(self, frame: bytes) -> list[bytes]:
        """The buffers a frame names, copied out (to send them by socket instead)."""
        _, _, _, serial, _, count = _HEAD.unpack_from(frame)
        with self._lock:
            segment = self._segments[serial]
        out = []
        for index in range(count):
            offset, length = _SPAN.unpack_from(frame, _HEAD.size + index * _SPAN.size)
            out.append(read_all(segment.fd, length, offset))
        return out

    # -- housekeeping ----------------------------------------------------------------------

    def trim(self, now: float | None = None) -> None:
        """Close free segments idle for :data:`IDLE_SECONDS` (their memory goes back)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._apply_unframed()
            while self._free and now - self._free[0].idle_since >= IDLE_SECONDS:
                self._close(self._free.pop(0))

    def _close(self, segment: _Segment) -> None:
        """With the lock held: forget a segment; its pages go when no reader maps it."""
        self._segments.pop(segment.serial, None)
        # Dropped, not closed: a view of it may still be on its way out of zmq.
        segment.mapping = None
        with contextlib.suppress(OSError):
            os.close(segment.fd)

    def close(self) -> None:
        """Close every segment (readers' mappings stay valid until they drop them);
        store no more."""
        with self._lock:
            self._closed = True
            for segment in list(self._segments.values()):
                self._close(segment)
            self._free.clear()
            if self._probe is not None:
                with contextlib.suppress(OSError):
                    os.close(self._probe.fd)
                self._probe = None

    @property
    def segment_count(self) -> int:
        """Segments open now, lent or free."""
        with self._lock:
            return len(self._segments)

    # -- the capability check ------------------------------------------------------------

    def probe(self) -> str:
        """A descriptor (hex) of a tiny segment, for a peer to check it can map ours."""
        if self._probe is None:
            serial = next(self._serials)
            fd = os.memfd_create(SEGMENT_NAME.format(pool=self._id, serial=serial),
                                 os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, mmap.PAGESIZE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, RESIZE_SEALS)
            self._probe = _Segment(fd, serial, mmap.PAGESIZE)
        return self._describe(self._probe, [(0, 0)]).hex()


def apply_when_free(lock: threading.Lock, waiting: deque[Any], item: Any,
                    apply: Callable[[], None]) -> None:
    """Queue ``item`` in ``waiting``, and ``apply`` the queue now if ``lock`` is free.
    For what a ``__del__`` or a finalizer calls, which a garbage collection may run
    anywhere, code holding ``lock`` included: the holder applies it at its next turn."""
    waiting.append(item)
    if lock.acquire(blocking=False):
        try:
            apply()
        finally:
            lock.release()


def releasing_frame(descriptor: bytes, owner: Any, serial: int) -> SharedFrame:
    """A frame of ``descriptor`` that calls ``owner.unframe(serial)`` when it dies."""
    frame = SharedFrame(descriptor)
    frame._release = _Unframe(owner, serial).run
    return frame


class _Unframe:
    """What a :class:`SharedFrame` calls when it dies: ``owner.unframe(serial)`` (through a
    weak reference, so a frame outliving its owner is harmless)."""

    __slots__ = ("pool", "serial")

    def __init__(self, pool: Any, serial: int) -> None:
        self.pool = weakref.ref(pool)
        self.serial = serial

    def run(self) -> None:
        pool = self.pool()
        if pool is not None:
            pool.unframe(self.serial)


# -- descriptors ---------------------------------------------------------------------------


def serial_of(frame: bytes) -> int:
    """The serial of the segment a descriptor names (for RELEASE, unmapped)."""
    return int(_HEAD.unpack_from(frame)[3])


def carried_bytes(frame: Any) -> int:
    """The bytes a message frame carries: a segment descriptor's, those of its buffers."""
    if isinstance(frame, SharedFrame):
        return sum(length for _, length in parse_descriptor(frame)[5])
    return memoryview(frame).nbytes


def largest_buffer(frame: bytes) -> int:
    """The size of the largest buffer a descriptor names: the frame it would have
    been on the socket (limits on frames apply to it alike)."""
    return max((length for _, length in parse_descriptor(frame)[5]), default=0)


def parse_descriptor(frame: bytes) -> tuple[int, int, int, int, int, list[tuple[int, int]]]:
    """A descriptor's owner pid, fd, pool id, serial, size and spans, checked in shape.

    Raises:
        SharedMemoryError: malformed.
    """
    try:
        pid, fd, pool, serial, size, count = _HEAD.unpack_from(frame)
        spans = [_SPAN.unpack_from(frame, _HEAD.size + i * _SPAN.size) for i in range(count)]
    except struct.error as exc:
        raise SharedMemoryError(f"malformed shared-memory descriptor: {exc}") from None
    if len(frame) != _HEAD.size + count * _SPAN.size:
        raise SharedMemoryError("malformed shared-memory descriptor: wrong length")
    if any(offset + length > size for offset, length in spans):
        raise SharedMemoryError("shared-memory descriptor names bytes past its segment")
    return pid, fd, pool, serial, size, spans
